-- v1: the first schema, with a few customers to find again after a rollback.
CREATE TABLE customers (
    id SERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    phone TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

INSERT INTO customers (name, phone) VALUES
    ('Ada Lovelace', '+49 30 1234567'),
    ('Grace Hopper', '+49 30 7654321'),
    ('Alan Turing', '+49 30 5550100');
