-- Costs the vendor prices later (Twilio): the estimate first debited, and when the row was
-- moved to the vendor's real price.
ALTER TABLE audit ADD COLUMN estimated_micros INTEGER;
ALTER TABLE audit ADD COLUMN reconciled_at_ms INTEGER;
