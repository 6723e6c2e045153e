//! The child processes of the tests that kill a running pipeline (the crash
//! tests, the Kafka exactly-once tests): this test binary started again with
//! one ignored test as its entry point, which runs the pipeline and reports
//! on standard output what the parent waits for.
//!
//! The protocol: the engine prints `TIDEMILL_FAILPOINT_REACHED <point>@<batch>`
//! and blocks when it reaches the failpoint named in `TIDEMILL_FAILPOINT`
//! (the `failpoints` feature, on in the test build); the entry point prints
//! `CHILD_REFUSED …` if the checkpoint is held by another process and
//! `CHILD_DONE` when its query has ended ([`report`]).
//!
//! The stateful pipeline the children run is [`ten_second_totals`].

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use arrow::datatypes::DataType;
use datafusion::functions_aggregate::expr_fn::{count, sum};
use datafusion::prelude::*;
use tidemill::engine::failpoint;
use tidemill::engine::window::tumble;
use tidemill::{StreamingQuery, TidemillError};

/// How long a child may go without an [`Event`] before the test fails.
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(180);

/// What a child printed that matters to the parent.
#[derive(Debug, PartialEq)]
pub enum Event {
    /// It reached its failpoint and blocks there.
    Failpoint,
    /// Its query ended.
    Done,
    /// Another process holds the checkpoint.
    Refused,
    /// It exited without any of the above.
    Exited,
}

/// The command that runs this test binary again with only the ignored test
/// `entry` (`module::name`), standard output piped for
/// [`Child::wait_for_event`], stopping at `failpoint` (`<point>@<batch>`)
/// if one is given. The caller adds the entry point's environment.
pub fn command(entry: &str, failpoint: Option<&str>) -> Command {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        entry,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env_remove(failpoint::ENV_VAR)
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    if let Some(point) = failpoint {
        cmd.env(failpoint::ENV_VAR, point);
    }
    cmd
}

/// The child's side: reports how starting its query went and, once
/// started, waits for the query to end and reports that.
pub async fn report(query: tidemill::Result<StreamingQuery>) -> anyhow::Result<()> {
    let query = match query {
        Err(e @ TidemillError::CheckpointInUse { .. }) => {
            println!("CHILD_REFUSED {e}");
            return Ok(());
        }
        other => other?,
    };
    query.await_termination().await?;
    println!("CHILD_DONE");
    Ok(())
}

/// The children's stateful pipeline: per 10-second tumbling window of
/// `event_time` (which has a watermark) and `symbol`, the number of rows
/// `n` and the sum of `price` `total`, with the window's `start` in
/// seconds.
pub fn ten_second_totals(df: DataFrame) -> datafusion::error::Result<DataFrame> {
    df.aggregate(
        vec![
            tumble(col("event_time"), "10 seconds").alias("w"),
            col("symbol"),
        ],
        vec![
            count(col("price")).alias("n"),
            sum(col("price")).alias("total"),
        ],
    )?
    .select(vec![
        (cast(get_field(col("w"), "start"), DataType::Int64) / lit(1000)).alias("start"),
        col("symbol"),
        col("n"),
        col("total"),
    ])
}

/// The random generator of a randomized crash test and its seed: from
/// `CRASH_SEED` when set (to replay a failure), else at random. The seed is
/// printed; put it in the failure message too.
pub fn seeded_rng() -> (u64, rand::rngs::StdRng) {
    use rand::SeedableRng;
    let seed = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("CRASH_SEED={seed}");
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}

/// A running child process, killed (SIGKILL) when dropped, so that a
/// failing test leaves none behind.
pub struct Child(std::process::Child);

impl Child {
    /// Starts `command` (see [`command`]).
    pub fn spawn(command: &mut Command) -> Self {
        Self(command.spawn().expect("spawn child"))
    }

    /// Starts `command` and checks that its query ends and the process
    /// exits cleanly.
    pub fn run_to_completion(command: &mut Command) {
        let mut child = Self::spawn(command);
        assert_eq!(child.wait_for_event(), Event::Done);
        assert!(child.wait().success());
    }

    /// Reads the child's output until it reaches its failpoint, finishes,
    /// is refused or exits.
    pub fn wait_for_event(&mut self) -> Event {
        let stdout = self.0.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Reads to the end (keeping the pipe open so the child never
            // dies of a broken pipe); the first event found is the one
            // reported.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let event = if line.contains("TIDEMILL_FAILPOINT_REACHED") {
                    Event::Failpoint
                } else if line.contains("CHILD_DONE") {
                    Event::Done
                } else if line.contains("CHILD_REFUSED") {
                    Event::Refused
                } else {
                    continue;
                };
                let _ = tx.send(event);
            }
            let _ = tx.send(Event::Exited);
        });
        rx.recv_timeout(PROGRESS_TIMEOUT)
            .unwrap_or_else(|_| panic!("child made no progress in {PROGRESS_TIMEOUT:?}"))
    }

    /// Waits for the child to exit.
    pub fn wait(&mut self) -> ExitStatus {
        self.0.wait().expect("wait for child")
    }

    /// Kills the child (SIGKILL) wherever it is, if it still runs.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}
