-- Several nodes on one database (--nats-url): the event log numbers its own events, and who is
-- connected is shared.

-- The last seq issued to each recipient of a session. An append takes its numbers here, in the
-- append's own transaction, so two nodes never issue the same seq and commit order is seq order.
CREATE TABLE session_counters (
    session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('agent', 'customer')),
    last        BIGINT NOT NULL,
    PRIMARY KEY (session_id, role)
);

-- The one live connection of each role. A new connection takes the next epoch; the node holding
-- an older one closes it (4008). `connected` goes false when the connection leaves.
CREATE TABLE participants (
    session_id  TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    role        TEXT NOT NULL CHECK (role IN ('agent', 'customer')),
    epoch       BIGINT NOT NULL,
    node_id     TEXT NOT NULL,
    connected   BOOLEAN NOT NULL,
    since       BIGINT NOT NULL,
    PRIMARY KEY (session_id, role)
);
CREATE INDEX participants_by_node ON participants (node_id) WHERE connected;

-- Serving nodes and when each was last seen: a participant of a node not seen for a while is
-- gone (the node died), whatever its row says.
CREATE TABLE nodes (
    id       TEXT PRIMARY KEY,
    seen_at  BIGINT NOT NULL
);
