-- v4: fails half-way on purpose. The first statements succeed, the third one
-- refers to a table that does not exist, so the whole migration must roll back
-- and leave the schema of v2 untouched.
ALTER TABLE customers ADD COLUMN vip BOOLEAN NOT NULL DEFAULT false;

CREATE TABLE vip_audit (id SERIAL PRIMARY KEY, customer_id INTEGER NOT NULL);

INSERT INTO vip_customers_that_do_not_exist (customer_id) SELECT id FROM customers;
