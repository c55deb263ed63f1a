//! The training-time estimate: the first request for a configuration measures this machine
//! with a short calibration run, later ones reuse the measurement.
//!
//! A binary of its own: calibration stands aside while a training run occupies the process
//! (they would share the CPU and burn's one random generator), and `cargo test` runs a
//! binary's tests in one process, so beside the training tests this one would see a busy
//! process, not a first request on an idle machine.

mod common;

use common::TestServer;
use common::training::{CLOTHES, fashion_dataset, seed_weights_cache, short_run_params, train_request};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_estimate_calibrates_and_later_ones_reuse_the_measurement() {
    let s = TestServer::start().await;
    seed_weights_cache(&s);
    fashion_dataset(&s).await;
    let params = short_run_params();
    let request = train_request(params.clone(), &["trouser", "sneaker"]);

    // The estimate: a calibration run measures this machine the first time, then it is reused.
    let (status, body) = s.post(&format!("{CLOTHES}/time_estimate"), request.clone()).await;
    assert_eq!(status, 200, "{body}");
    let estimate = &body["training_time_estimates"][0];
    let seconds = estimate["seconds"].as_f64().unwrap();
    assert!(seconds > 0.0 && seconds < 3600.0, "{body}");
    let breakdown = &estimate["breakdown"];
    assert_eq!(breakdown["throughput_source"], "calibrated now", "{body}");
    assert!(breakdown["train_images_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(breakdown["train_inputs"].as_u64().unwrap() + breakdown["validation_inputs"].as_u64().unwrap(), 20);
    let mut longer = params.clone();
    longer["num_epochs"] = json!(20);
    let (_, body) = s.post(&format!("{CLOTHES}/time_estimate"), train_request(longer, &["trouser", "sneaker"])).await;
    let longer_estimate = &body["training_time_estimates"][0];
    assert!(
        longer_estimate["breakdown"]["throughput_source"].as_str().unwrap().starts_with("measured by calibration"),
        "{body}"
    );
    let ratio = longer_estimate["breakdown"]["training_seconds"].as_f64().unwrap()
        / breakdown["training_seconds"].as_f64().unwrap();
    assert!((ratio - 10.0).abs() < 0.01, "ten times the epochs, ten times the training: {body}");
    assert!(longer_estimate["seconds"].as_f64().unwrap() > seconds);
}
