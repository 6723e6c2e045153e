-- The guide's windowed word count in complete mode: 10-minute windows
-- sliding every 5 minutes, no watermark; every batch prints the whole table.
CREATE STREAM words (word VARCHAR, ts TIMESTAMP)
WITH (connector = 'files', path = 'input', format = 'json');

CREATE SINK counts WITH (connector = 'console', output_mode = 'complete', num_rows = 100);

INSERT INTO counts
SELECT to_char(window.start, '%H:%M') AS window_start,
       to_char(window.end, '%H:%M') AS window_end,
       word, count(*) AS n
FROM words
GROUP BY window(ts, '10 minutes', '5 minutes'), word;
