-- SELECT DISTINCT in update mode, no watermark: an aggregation without
-- aggregate functions, as Spark plans it.
CREATE STREAM words (word VARCHAR, ts TIMESTAMP)
WITH (connector = 'files', path = 'input', format = 'json');

CREATE SINK words_seen WITH (connector = 'console', output_mode = 'update', num_rows = 100);

INSERT INTO words_seen SELECT DISTINCT word FROM words;
