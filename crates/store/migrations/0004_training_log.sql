-- Training logs, pre-flight results, time estimates and the throughput measurements behind them.

ALTER TABLE model_versions ADD COLUMN invalid_inputs TEXT;        -- JSON [{input_id, reason}] from pre-flight
ALTER TABLE model_versions ADD COLUMN estimated_seconds REAL;     -- the estimate made when training started
ALTER TABLE model_versions ADD COLUMN started_at TEXT;            -- first claimed by a worker
ALTER TABLE model_versions ADD COLUMN completed_at TEXT;          -- reached a final status
ALTER TABLE model_versions ADD COLUMN failure TEXT;               -- JSON {stage, reason, hint, last_log_lines} of a failed run

-- One row per log line. `seq` is global and increasing, so a reader resumes after the last one it saw.
CREATE TABLE model_version_logs (
    seq         INTEGER PRIMARY KEY,
    version_seq INTEGER NOT NULL REFERENCES model_versions (seq) ON DELETE CASCADE,
    time        TEXT NOT NULL,
    level       TEXT NOT NULL,       -- info | warn | error
    event       TEXT NOT NULL,       -- status | preflight | invalid_input | step | epoch | message | ...
    message     TEXT NOT NULL,
    data        TEXT                 -- JSON, the event's fields
);
CREATE INDEX model_version_logs_by_version ON model_version_logs (version_seq, seq);

-- Measured training and inference speed per architecture, image size, batch and machine, from
-- short calibration runs and from real training runs; time estimates multiply it out.
CREATE TABLE throughput (
    hardware         TEXT NOT NULL,
    architecture     TEXT NOT NULL,
    image_size       INTEGER NOT NULL,
    batch_size       INTEGER NOT NULL,
    frozen_backbone  INTEGER NOT NULL,
    train_images_per_second REAL NOT NULL,
    infer_images_per_second REAL NOT NULL,
    source           TEXT NOT NULL,  -- calibration | training
    measured_at      TEXT NOT NULL,
    PRIMARY KEY (hardware, architecture, image_size, batch_size, frozen_backbone)
);
