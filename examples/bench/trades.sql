-- A trading pipeline to measure with `tidemill bench` (see the README's
-- "Choosing a trigger interval"). Run from the repository's root:
--
--   tidemill bench examples/bench/trades.sql
--
-- The bench replays the stream's rows (examples/bench/trades: 1 200 trades,
-- 2 minutes of event time, a few seconds out of order) at each input rate,
-- moving event times forward each loop, and discards the output unless
-- given --sink real.

CREATE STREAM trades (
  symbol VARCHAR, exchange VARCHAR, price DOUBLE, quantity DOUBLE,
  event_time TIMESTAMP,
  WATERMARK FOR event_time AS event_time - INTERVAL '10' SECOND
) WITH (connector = 'files', path = 'examples/bench/trades', format = 'json');

CREATE SINK big_trades WITH (connector = 'files', path = 'target/bench-example/big_trades',
                             output_mode = 'append');
CREATE SINK per_minute WITH (connector = 'console', output_mode = 'update');

-- Stateless: the large trades.
INSERT INTO big_trades
SELECT symbol, exchange, price, quantity, event_time FROM trades WHERE quantity >= 1000;

-- Windowed: per-minute metrics per symbol and exchange, updated each batch.
INSERT INTO per_minute
SELECT window.start AS minute, symbol, exchange, count(*) AS trades,
       sum(quantity) AS volume, sum(price * quantity) / sum(quantity) AS vwap,
       max(price) AS high, min(price) AS low
FROM trades
GROUP BY window(event_time, '1 minute'), symbol, exchange;
