-- Session windows per word, 5-minute gap, late data up to 10 minutes:
-- sessions whose ranges touch merge, as in Spark and Flink.
CREATE STREAM words (
  word VARCHAR, ts TIMESTAMP,
  WATERMARK FOR ts AS ts - INTERVAL '10' MINUTE
) WITH (connector = 'files', path = 'input', format = 'json');

CREATE SINK sessions WITH (connector = 'console', output_mode = 'update', num_rows = 100);

INSERT INTO sessions
SELECT to_char(session_window.start, '%H:%M') AS session_start,
       to_char(session_window.end, '%H:%M') AS session_end,
       word, count(*) AS n
FROM words
GROUP BY session_window(ts, '5 minutes'), word;
