-- The guide's windowed word count: 10-minute windows sliding every 5
-- minutes, with a 10-minute watermark.
CREATE STREAM words (
  word VARCHAR, ts TIMESTAMP,
  WATERMARK FOR ts AS ts - INTERVAL '10' MINUTE
) WITH (connector = 'files', path = 'input', format = 'json');

CREATE SINK counts WITH (connector = 'console', output_mode = 'append', num_rows = 100);

INSERT INTO counts
SELECT to_char(window.start, '%H:%M') AS window_start,
       to_char(window.end, '%H:%M') AS window_end,
       word, count(*) AS n
FROM words
GROUP BY window(ts, '10 minutes', '5 minutes'), word;
