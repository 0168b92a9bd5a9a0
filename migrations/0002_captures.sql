-- Captures (stills and agent frames), pending capture requests, and the webhook outbox.

CREATE TABLE captures (
    id               TEXT PRIMARY KEY NOT NULL,
    session_id       TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    slot_id          TEXT,
    area             TEXT NOT NULL,
    angle            TEXT NOT NULL,
    note             TEXT,
    source           TEXT NOT NULL CHECK (source IN ('customer_still', 'agent_frame')),
    request_id       TEXT,
    mime             TEXT NOT NULL,
    width            INTEGER NOT NULL,
    height           INTEGER NOT NULL,
    bytes            INTEGER NOT NULL,
    sha256           TEXT NOT NULL,     -- hex; the original is stored under this name
    sharpness        REAL NOT NULL,
    brightness       REAL NOT NULL,
    warnings         TEXT NOT NULL,     -- JSON array of strings
    uploaded_by      TEXT NOT NULL,     -- 'agent', 'customer' or an API key fingerprint
    idempotency_key  TEXT,
    request_hash     BLOB,              -- what the idempotency key was first used with
    created_at       INTEGER NOT NULL,
    UNIQUE (session_id, idempotency_key)
);
CREATE INDEX captures_session ON captures (session_id, created_at);
CREATE INDEX captures_sha256 ON captures (sha256);

-- `capture.request`s sent by the agent: a customer may upload only against a pending one.
CREATE TABLE capture_requests (
    session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    request_id  TEXT NOT NULL,
    area        TEXT NOT NULL,
    angle       TEXT NOT NULL,
    slot_id     TEXT,
    status      TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'fulfilled', 'failed')),
    capture_id  TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (session_id, request_id)
);

-- Webhook deliveries, written in the same transaction as the change they report.
CREATE TABLE webhook_outbox (
    id               TEXT PRIMARY KEY NOT NULL,   -- the stable `webhook-id`
    session_id       TEXT NOT NULL,
    url              TEXT NOT NULL,
    event_type       TEXT NOT NULL,
    payload          TEXT NOT NULL,               -- exact JSON body
    created_at       INTEGER NOT NULL,
    next_attempt_at  INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    status           TEXT NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'delivered', 'failed', 'disabled')),
    last_status      INTEGER,
    last_error       TEXT,
    delivered_at     INTEGER
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (status, next_attempt_at);

-- Endpoints that answered 410 Gone: nothing more is sent to them.
CREATE TABLE webhook_disabled (
    url          TEXT PRIMARY KEY NOT NULL,
    disabled_at  INTEGER NOT NULL
);
