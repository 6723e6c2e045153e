-- Tumbling 10-minute windows with a 5-minute watermark, in complete mode:
-- as in Spark, the watermark neither drops late rows nor evicts state here.
CREATE STREAM words (
  word VARCHAR, ts TIMESTAMP,
  WATERMARK FOR ts AS ts - INTERVAL '5' MINUTE
) WITH (connector = 'files', path = 'input', format = 'json');

CREATE SINK counts WITH (connector = 'console', output_mode = 'complete', num_rows = 100);

INSERT INTO counts
SELECT to_char(window.start, '%H:%M') AS window_start,
       to_char(window.end, '%H:%M') AS window_end,
       word, count(*) AS n
FROM words
GROUP BY window(ts, '10 minutes'), word;
