-- Retention: when the retention sweeper deleted a session's images, captures, events and webhook
-- rows. The session row itself stays as a tombstone, so a claims system asking for its captures
-- gets 410 `session_purged` rather than an empty list or a 404.

ALTER TABLE sessions ADD COLUMN purged_at INTEGER;

-- The sweeper's question: sessions not yet purged, by when they ended (closed, or else expired).
CREATE INDEX sessions_retention ON sessions (COALESCE(closed_at, expires_at)) WHERE purged_at IS NULL;
