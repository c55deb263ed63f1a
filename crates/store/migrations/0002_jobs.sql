-- Durable jobs (training, evaluation, ...): claimed with a lease that the worker renews, so a job
-- whose worker died is claimed again once its lease expires.

CREATE TABLE jobs (
    seq              INTEGER PRIMARY KEY,        -- claim order (oldest first)
    id               TEXT NOT NULL UNIQUE,
    kind             TEXT NOT NULL,
    payload          TEXT NOT NULL,              -- JSON, the kind's own
    state            TEXT NOT NULL CHECK (state IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    lease_owner      TEXT,
    lease_expires_ms INTEGER,                    -- unix milliseconds
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    result           TEXT,                       -- JSON, set when the job ends
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
CREATE INDEX jobs_claimable ON jobs (state, seq);
