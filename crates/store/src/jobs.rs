//! The durable job queue. A worker claims the oldest runnable job with a lease, renews it with
//! heartbeats while it works, and finishes it; a job whose lease runs out (its worker crashed)
//! is claimed again. Finishing is idempotent and only the lease holder can do it, because a job
//! may run twice: a second finish — or a finish by a worker that lost its lease — changes nothing.

use std::time::Duration;

use deeptune_core::ApiError;
use serde::{Deserialize, Serialize};

use crate::{Result, Store, db_error, now};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
}

impl JobState {
    fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
        }
    }

    fn parse(s: &str) -> JobState {
        match s {
            "queued" => JobState::Queued,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            _ => JobState::Canceled,
        }
    }

    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Canceled)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub kind: String,
    pub payload: serde_json::Value,
    pub state: JobState,
    pub attempts: u32,
    pub lease_owner: Option<String>,
    pub cancel_requested: bool,
    pub result: Option<serde_json::Value>,
}

/// What a heartbeat tells the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// False when another worker holds the job now (this one's lease ran out): stop, don't finish.
    pub lease_held: bool,
    pub cancel_requested: bool,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

type JobRow = (String, String, String, String, i64, Option<String>, i64, Option<String>);

fn job_from_row(row: JobRow) -> Job {
    let (id, kind, payload, state, attempts, lease_owner, cancel, result) = row;
    Job {
        id,
        kind,
        payload: serde_json::from_str(&payload).unwrap_or(serde_json::Value::Null),
        state: JobState::parse(&state),
        attempts: attempts as u32,
        lease_owner,
        cancel_requested: cancel != 0,
        result: result.and_then(|r| serde_json::from_str(&r).ok()),
    }
}

const JOB_COLUMNS: &str = "id, kind, payload, state, attempts, lease_owner, cancel_requested, result";

impl Store {
    /// Adds a job; it runs when a worker claims it.
    pub async fn enqueue_job(&self, id: &str, kind: &str, payload: &serde_json::Value) -> Result<()> {
        let ts = now();
        sqlx::query(
            "INSERT INTO jobs (id, kind, payload, state, created_at, updated_at) VALUES (?, ?, ?, 'queued', ?, ?)",
        )
        .bind(id)
        .bind(kind)
        .bind(payload.to_string())
        .bind(&ts)
        .bind(&ts)
        .execute(&self.pool)
        .await
        .map_err(|e| crate::insert_error(e, "job", id))?;
        Ok(())
    }

    pub async fn get_job(&self, id: &str) -> Result<Job> {
        let row: Option<JobRow> = sqlx::query_as(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        row.map(job_from_row).ok_or_else(|| ApiError::not_found("job", id))
    }

    /// Claims the oldest queued job, or a running one whose lease expired, for `worker` until
    /// `lease` from now. One statement, so two workers never claim the same job.
    pub async fn claim_job(&self, worker: &str, kinds: &[&str], lease: Duration) -> Result<Option<Job>> {
        let now = now_ms();
        // Queued jobs canceled before anyone ran them end here.
        sqlx::query(
            "UPDATE jobs SET state = 'canceled', updated_at = ? WHERE state = 'queued' AND cancel_requested = 1",
        )
        .bind(crate::now())
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        let kinds_json = serde_json::to_string(kinds).expect("kinds serialise");
        let row: Option<JobRow> = sqlx::query_as(&format!(
            "UPDATE jobs SET state = 'running', lease_owner = ?1, lease_expires_ms = ?2, attempts = attempts + 1,
                 updated_at = ?3
             WHERE seq = (SELECT seq FROM jobs
                          WHERE (state = 'queued' OR (state = 'running' AND lease_expires_ms < ?4))
                            AND kind IN (SELECT value FROM json_each(?5))
                          ORDER BY seq LIMIT 1)
             RETURNING {JOB_COLUMNS}"
        ))
        .bind(worker)
        .bind(now + lease.as_millis() as i64)
        .bind(crate::now())
        .bind(now)
        .bind(kinds_json)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(row.map(job_from_row))
    }

    /// Renews `worker`'s lease and reports whether it still holds the job and whether a cancel
    /// was asked for.
    pub async fn heartbeat_job(&self, id: &str, worker: &str, lease: Duration) -> Result<Heartbeat> {
        let renewed = sqlx::query(
            "UPDATE jobs SET lease_expires_ms = ?, updated_at = ? WHERE id = ? AND state = 'running' AND lease_owner = ?",
        )
        .bind(now_ms() + lease.as_millis() as i64)
        .bind(now())
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await
        .map_err(db_error)?
        .rows_affected()
            == 1;
        let job = self.get_job(id).await?;
        Ok(Heartbeat { lease_held: renewed, cancel_requested: job.cancel_requested })
    }

    /// Ends the job if `worker` holds it. Returns false (and changes nothing) when the job has
    /// already ended or another worker holds it — so finishing twice is harmless.
    pub async fn finish_job(
        &self,
        id: &str,
        worker: &str,
        state: JobState,
        result: &serde_json::Value,
    ) -> Result<bool> {
        if !state.is_final() {
            return Err(ApiError::internal(format!("finish_job with non-final state {state:?}")));
        }
        let done = sqlx::query(
            "UPDATE jobs SET state = ?, result = ?, lease_owner = NULL, lease_expires_ms = NULL, updated_at = ?
             WHERE id = ? AND state = 'running' AND lease_owner = ?",
        )
        .bind(state.as_str())
        .bind(result.to_string())
        .bind(now())
        .bind(id)
        .bind(worker)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected() == 1)
    }

    /// Asks for a job to stop: a queued job is canceled at once; a running one sees the request
    /// at its next heartbeat. Returns the job's state after the request.
    pub async fn request_job_cancel(&self, id: &str) -> Result<JobState> {
        let ts = now();
        sqlx::query(
            "UPDATE jobs SET cancel_requested = 1, updated_at = ?,
                 state = CASE WHEN state = 'queued' THEN 'canceled' ELSE state END
             WHERE id = ?",
        )
        .bind(&ts)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(self.get_job(id).await?.state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    async fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db.sqlite")).await.unwrap();
        (dir, store)
    }

    const LEASE: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn jobs_are_claimed_once_in_order_and_finished_once() {
        let (_dir, store) = store().await;
        store.enqueue_job("a", "train", &json!({"n": 1})).await.unwrap();
        store.enqueue_job("b", "train", &json!({"n": 2})).await.unwrap();
        store.enqueue_job("c", "evaluate", &json!({})).await.unwrap();
        let first = store.claim_job("w1", &["train"], LEASE).await.unwrap().unwrap();
        assert_eq!((first.id.as_str(), first.attempts, first.payload["n"].as_i64()), ("a", 1, Some(1)));
        let second = store.claim_job("w2", &["train"], LEASE).await.unwrap().unwrap();
        assert_eq!(second.id, "b");
        assert!(store.claim_job("w3", &["train"], LEASE).await.unwrap().is_none(), "nothing left of that kind");
        assert!(store.finish_job("a", "w1", JobState::Succeeded, &json!({"accuracy": 0.9})).await.unwrap());
        assert!(!store.finish_job("a", "w1", JobState::Failed, &json!({})).await.unwrap(), "second finish is a no-op");
        assert!(!store.finish_job("b", "w1", JobState::Succeeded, &json!({})).await.unwrap(), "not w1's job");
        let a = store.get_job("a").await.unwrap();
        assert_eq!((a.state, a.result.unwrap()["accuracy"].as_f64()), (JobState::Succeeded, Some(0.9)));
        assert!(store.enqueue_job("a", "train", &json!({})).await.is_err(), "ids are unique");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_workers_never_claim_the_same_job() {
        let (_dir, store) = store().await;
        for i in 0..40 {
            store.enqueue_job(&format!("j{i}"), "train", &json!({})).await.unwrap();
        }
        let mut tasks = Vec::new();
        for w in 0..4 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut mine = Vec::new();
                while let Some(job) = store.claim_job(&format!("w{w}"), &["train"], LEASE).await.unwrap() {
                    mine.push(job.id);
                }
                mine
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all.sort();
        let n = all.len();
        all.dedup();
        assert_eq!((n, all.len()), (40, 40));
    }

    #[tokio::test]
    async fn a_job_whose_worker_died_is_claimed_again_after_its_lease() {
        let (_dir, store) = store().await;
        store.enqueue_job("j", "train", &json!({})).await.unwrap();
        store.claim_job("dead", &["train"], Duration::from_millis(50)).await.unwrap().unwrap();
        assert!(store.claim_job("w2", &["train"], LEASE).await.unwrap().is_none(), "lease still held");
        tokio::time::sleep(Duration::from_millis(120)).await;
        let again = store.claim_job("w2", &["train"], LEASE).await.unwrap().unwrap();
        assert_eq!((again.attempts, again.lease_owner.as_deref()), (2, Some("w2")));
        // The dead worker, if it comes back, has lost the job.
        let beat = store.heartbeat_job("j", "dead", LEASE).await.unwrap();
        assert!(!beat.lease_held);
        assert!(!store.finish_job("j", "dead", JobState::Succeeded, &json!({})).await.unwrap());
        assert!(store.heartbeat_job("j", "w2", LEASE).await.unwrap().lease_held);
        assert!(store.finish_job("j", "w2", JobState::Succeeded, &json!({})).await.unwrap());
    }

    #[tokio::test]
    async fn cancel_ends_a_queued_job_and_reaches_a_running_one_by_heartbeat() {
        let (_dir, store) = store().await;
        store.enqueue_job("q", "train", &json!({})).await.unwrap();
        assert_eq!(store.request_job_cancel("q").await.unwrap(), JobState::Canceled);
        assert!(store.claim_job("w", &["train"], LEASE).await.unwrap().is_none());
        store.enqueue_job("r", "train", &json!({})).await.unwrap();
        store.claim_job("w", &["train"], LEASE).await.unwrap().unwrap();
        assert_eq!(store.request_job_cancel("r").await.unwrap(), JobState::Running);
        let beat = store.heartbeat_job("r", "w", LEASE).await.unwrap();
        assert!(beat.lease_held && beat.cancel_requested);
        assert!(store.finish_job("r", "w", JobState::Canceled, &json!({})).await.unwrap());
        assert!(matches!(store.request_job_cancel("nope").await, Err(e) if e.code.http_status() == 404));
    }
}
