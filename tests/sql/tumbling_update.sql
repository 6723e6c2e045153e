-- The guide's watermarking example: words with event times, counted per
-- word in 10-minute tumbling windows, accepting data up to 10 minutes late.
CREATE STREAM words (
  word VARCHAR, ts TIMESTAMP,
  WATERMARK FOR ts AS ts - INTERVAL '10' MINUTE
) WITH (connector = 'files', path = 'input', format = 'json');

CREATE SINK counts WITH (connector = 'console', output_mode = 'update', num_rows = 100);

INSERT INTO counts
SELECT to_char(window.start, '%H:%M') AS window_start,
       to_char(window.end, '%H:%M') AS window_end,
       word, count(*) AS n
FROM words
GROUP BY window(ts, '10 minutes'), word;
