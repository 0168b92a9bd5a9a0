-- Sessions, their join tokens, checklist slots and the per-recipient event log.
-- Times are Unix epoch milliseconds (INTEGER) so they sort and compare cheaply.

CREATE TABLE sessions (
    id              TEXT PRIMARY KEY NOT NULL,
    claim_ref       TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('created', 'active', 'closed', 'expired')),
    locale          TEXT,
    vehicle         TEXT,            -- JSON object or NULL
    customer        TEXT,            -- JSON object or NULL
    webhook_url     TEXT,
    token_salt      TEXT NOT NULL,   -- per-session random salt; join tokens are HMAC(server secret, salt:role)
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    started_at      INTEGER,
    closed_at       INTEGER,
    closed_by       TEXT
);
CREATE INDEX sessions_claim_ref ON sessions (claim_ref);
CREATE INDEX sessions_status ON sessions (status, expires_at);

-- Only the SHA-256 of a join token is stored.
CREATE TABLE join_tokens (
    token_hash  BLOB PRIMARY KEY NOT NULL,
    session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('agent', 'customer')),
    UNIQUE (session_id, role)
);

CREATE TABLE checklist_slots (
    session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    id          TEXT NOT NULL,
    position    INTEGER NOT NULL,
    area        TEXT NOT NULL,
    angle       TEXT NOT NULL,
    label       TEXT,
    status      TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done')),
    capture_id  TEXT,
    PRIMARY KEY (session_id, id)
);

-- Durable events, one row per recipient, with the recipient's contiguous seq.
-- `body` is the exact JSON text sent over the WebSocket (seq included).
CREATE TABLE events (
    session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('agent', 'customer')),
    seq         INTEGER NOT NULL,
    kind        TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (session_id, role, seq)
) WITHOUT ROWID;

-- Idempotency-Key records for REST creates: the same key and request replay the first answer.
CREATE TABLE idempotency_keys (
    scope         TEXT NOT NULL,     -- who used the key (API key fingerprint) and for what
    key           TEXT NOT NULL,
    request_hash  BLOB NOT NULL,
    resource_id   TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (scope, key)
);
