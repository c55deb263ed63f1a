-- Workflows: ordered graphs of model and operator nodes, run on inputs.

CREATE TABLE workflows (
    app_pk      INTEGER NOT NULL REFERENCES apps (pk) ON DELETE CASCADE,
    id          TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    nodes       TEXT NOT NULL,    -- JSON [WorkflowNode], in order
    created_at  TEXT NOT NULL,
    PRIMARY KEY (app_pk, id)
);
