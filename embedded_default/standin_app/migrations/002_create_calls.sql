-- v1: calls handled by the voice assistant, one row per call.
CREATE TABLE calls (
    id SERIAL PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers (id),
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    duration_seconds INTEGER NOT NULL CHECK (duration_seconds >= 0)
);

CREATE INDEX calls_customer_id_idx ON calls (customer_id);

INSERT INTO calls (customer_id, duration_seconds) VALUES (1, 95), (2, 42);
