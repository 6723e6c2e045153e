-- The guide's programming model: a running word count, the whole result
-- table printed after every batch (complete mode; no watermark needed).
CREATE STREAM words (word VARCHAR, ts TIMESTAMP)
WITH (connector = 'files', path = 'input', format = 'json');

CREATE SINK counts WITH (connector = 'console', output_mode = 'complete', num_rows = 100);

INSERT INTO counts
SELECT word, count(*) AS n FROM words GROUP BY word;
