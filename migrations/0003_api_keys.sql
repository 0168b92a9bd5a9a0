-- API keys of claims systems created with `capturelink api-key create`. Only the SHA-256 of a key
-- is stored: the key itself is printed once and cannot be recovered from the database.
-- Keys are never deleted, only revoked, so an id is never reused and the audit trail stays.

CREATE TABLE api_keys (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT,
    hash          BLOB NOT NULL UNIQUE,   -- SHA-256 of the key
    created_at    INTEGER NOT NULL,
    revoked_at    INTEGER,
    last_used_at  INTEGER                 -- updated at most once a minute per key
);
