-- v2: a free-text note per item. Additive with a default, so v1 keeps working
-- on this schema (v1 never names the column): blue/green can run both.
ALTER TABLE items ADD COLUMN note text NOT NULL DEFAULT '';
