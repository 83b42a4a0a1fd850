-- v2: an expand-only change; v1 keeps working on this schema (new nullable
-- column, new table), so a rollback of the image to v1 needs no down-migration.
ALTER TABLE customers ADD COLUMN email TEXT;

UPDATE customers SET email = lower(split_part(name, ' ', 1)) || '@example.com';

CREATE TABLE appointments (
    id SERIAL PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers (id),
    starts_at TIMESTAMPTZ NOT NULL
);

INSERT INTO appointments (customer_id, starts_at) VALUES (1, '2030-01-02T10:00:00Z');
