//! Scale-out as a consumer group, against a real broker.
//!
//! Stateless: three processes run examples/kafka-scale-out-job.toml
//! (`scale_out = true`) on one 4-partition topic. The input arrives in three parts: the
//! first while all three run, the second after one of them was killed with
//! SIGKILL and started again (it rejoins), the third after another one was
//! stopped (it leaves; the other two take its partitions). The group's
//! output, deduplicated by key, must equal what one uninterrupted process
//! writes for the same topic.
//!
//! With state: the reference job as a group of three, one killed and
//! started again, checked against the Flink checker; the same with a dedup
//! stage over duplicated input; and reads of a group's features sent to any
//! member, answered by the owner of the entity's task.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::thread;
use std::time::{Duration, Instant};

use crate::kafka::{Broker, kafka_tool};
use crate::support;

const TOPIC: &str = "grp";
const EXAMPLE: &str = "examples/kafka-scale-out-job.toml";
/// The reference job as a group that keeps state.
const GROUP_EXAMPLE: &str = "examples/kafka-group-reference-job.toml";

/// A `freshet run` of the example, one member of the group.
struct Member {
    child: Child,
    log: PathBuf,
    /// Where this run's lines begin in the log (a restarted member appends).
    log_from: usize,
    /// Its stdout, which says where it listens.
    out: PathBuf,
}

impl Member {
    fn start(broker: &Broker, dir: &Path, name: &str) -> Member {
        Self::spawn(broker, dir, name, (EXAMPLE, TOPIC, "cleaners"), &[])
    }

    /// A `freshet run` of `example` on `topic` in `group`, with `extra` arguments.
    fn spawn(
        broker: &Broker,
        dir: &Path,
        name: &str,
        (example, topic, group): (&str, &str, &str),
        extra: &[&str],
    ) -> Member {
        let log = dir.join(format!("{name}.log"));
        let log_from = std::fs::metadata(&log).map_or(0, |m| m.len() as usize);
        let stderr = std::fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        let stdout = std::fs::File::create(dir.join(format!("{name}.out"))).unwrap();
        let child = support::freshet()
            .arg("run")
            .arg("--config")
            .arg(support::repo_root().join(example))
            .arg("--data-dir")
            .arg(dir.join(name))
            .args(["--listen", "127.0.0.1:0"])
            .args(extra)
            .env("KAFKA_BROKERS", broker.addr())
            .env("FRESHET_TOPIC", topic)
            .env("FRESHET_GROUP", group)
            .env("FRESHET_CHECKPOINT_INTERVAL", "200ms")
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        Member { child, log, log_from, out: dir.join(format!("{name}.out")) }
    }

    fn log(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.get(self.log_from..).unwrap_or_default().to_owned()
    }

    /// For a failure message: the last lines of this run's log (librdkafka's
    /// own chatter left out), then the whole log. CI shows the head of a
    /// failure's output, so the end state comes first.
    fn tail_then_log(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().filter(|l| !l.contains("freshet_io::kafka: librdkafka:")).collect();
        let tail = lines[lines.len().saturating_sub(40)..].join("\n");
        format!("its last lines:\n{tail}\n---- its whole log:\n{log}")
    }

    /// The partitions of this member's latest assignment (none before its first).
    fn assigned(&self) -> Vec<u32> {
        let log = self.log();
        // "partitions" in a stateless group, "tasks" in one with state.
        let Some(line) = log.lines().rev().find(|l| l.contains("Kafka group rebalance: ")) else {
            return Vec::new();
        };
        if line.contains(" revoked: ") {
            return Vec::new();
        }
        let list = line.split(" assigned: [").nth(1).and_then(|r| r.split(']').next()).unwrap_or("");
        list.split(',').filter_map(|p| p.trim().parse().ok()).collect()
    }

    /// Where its API answers (the first address its output names), once it says.
    fn addr(&self) -> Option<String> {
        let out = std::fs::read_to_string(&self.out).unwrap_or_default();
        out.split("http://").nth(1).and_then(|r| r.split('/').next()).map(str::to_owned)
    }

    /// Its `/metrics` page.
    fn metrics(&self) -> String {
        let addr = self.addr().unwrap_or_else(|| panic!("no address in the member's output:\n{}", self.log()));
        let (status, body) = support::request(&addr, "GET", "/metrics", "text/plain", "");
        assert_eq!(status, 200, "{body}");
        body
    }

    fn assignments(&self) -> usize {
        self.log().matches("Kafka group rebalance: partitions assigned").count()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits (up to 120 s) until this member runs a task.
    fn wait_for_a_task(&mut self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.log().contains("Task restored; starting.") {
            assert!(self.alive(), "{name} exited before it ran a task:\n{}", self.log());
            assert!(Instant::now() < deadline, "{name} started no task within 120 s:\n{}", self.log());
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kills this member with SIGKILL, mid-run.
    fn kill(&mut self, name: &str) {
        assert!(self.alive(), "{name} finished before it could be killed mid-run:\n{}", self.log());
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Waits (up to 10 minutes) until every member of a bounded job has ended, each with success.
fn wait_for_success(members: &mut [&mut Member]) {
    let deadline = Instant::now() + Duration::from_secs(600);
    for m in members.iter_mut() {
        while m.alive() {
            assert!(Instant::now() < deadline, "a member did not finish within 10 minutes; {}", m.tail_then_log());
            thread::sleep(Duration::from_millis(200));
        }
        let status = m.child.wait().unwrap();
        assert!(status.success(), "a member failed ({status}); {}", m.tail_then_log());
    }
}

/// Every run's log of `members`, restarted ones included.
fn whole_logs(members: &[&Member]) -> String {
    members.iter().map(|m| std::fs::read_to_string(&m.log).unwrap_or_default()).collect::<Vec<_>>().join("\n")
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `members` own the four partitions between them, each its own.
fn wait_for_settled_group(members: &mut [&mut Member]) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let owned: Vec<Vec<u32>> = members.iter().map(|m| m.assigned()).collect();
        let all: Vec<u32> = owned.iter().flatten().copied().collect();
        let distinct: BTreeSet<u32> = all.iter().copied().collect();
        if owned.iter().all(|o| !o.is_empty()) && all.len() == 4 && distinct.len() == 4 {
            return;
        }
        for m in members.iter_mut() {
            assert!(m.alive(), "a member exited:\n{}", m.log());
        }
        assert!(
            Instant::now() < deadline,
            "the group did not settle within 90 s (assignments {owned:?}); last log:\n{}",
            members[0].log()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// The distinct values of `topic` (deduplicated by key, as a compacted topic keeps them).
fn values(broker: &Broker, topic: &str) -> HashSet<String> {
    let run = kafka_tool(broker, &["consume", "--topic", topic, "--values", "--dedup-by-key"]);
    run.stdout_text().lines().map(str::to_owned).collect()
}

/// Waits until `topic` holds every one of `want`.
fn wait_for_values(broker: &Broker, topic: &str, want: &HashSet<String>, what: &str, members: &mut [&mut Member]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let have = values(broker, topic);
        let missing = want.iter().filter(|v| !have.contains(*v)).count();
        if missing == 0 {
            return;
        }
        for m in members.iter_mut() {
            assert!(m.alive(), "a member exited:\n{}", m.log());
        }
        if Instant::now() >= deadline {
            let logs: Vec<String> = members.iter().map(|m| m.log()).collect();
            panic!(
                "{what}: {missing} of {} results still missing after 120 s; members' logs:\n{}",
                want.len(),
                logs.join("\n----\n")
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// The `event_id` of a result row.
fn event_id(row: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(row).unwrap_or_else(|e| panic!("result {row:?}: {e}"));
    v["event_id"].as_str().unwrap_or_else(|| panic!("result without event_id: {row}")).to_owned()
}

#[test]
fn a_group_of_processes_shares_partitions_and_loses_nothing_when_one_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    let input = dir.path().join("in.ndjson");
    support::generate_events(&input, &support::workload_args(21, 30_000, &[]));
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let parts: Vec<PathBuf> = lines
        .chunks(lines.len().div_ceil(3))
        .enumerate()
        .map(|(i, chunk)| {
            let path = dir.path().join(format!("part{i}.ndjson"));
            std::fs::write(&path, chunk.join("\n") + "\n").unwrap();
            path
        })
        .collect();
    let produce = |path: &Path| {
        kafka_tool(&broker, &["produce", "--topic", TOPIC, "--key-field", "user_id", path.to_str().unwrap()]);
    };
    kafka_tool(&broker, &["create-topic", "--topic", TOPIC, "--partitions", "4"]);

    let mut p1 = Member::start(&broker, dir.path(), "p1");
    let mut p2 = Member::start(&broker, dir.path(), "p2");
    let mut p3 = Member::start(&broker, dir.path(), "p3");
    wait_for_settled_group(&mut [&mut p1, &mut p2, &mut p3]);
    produce(&parts[0]);

    // The oracle: one bounded, uninterrupted process over the same topic
    // (offsets, hence dead letters, are the same), once all input is in.
    // Its results by input part tell the waits below what to expect.
    let part_ids: Vec<HashSet<String>> = parts
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter_map(|v| v["event_id"].as_str().map(str::to_owned))
                .collect()
        })
        .collect();
    let clean = format!("{TOPIC}-clean");
    let dlq = format!("{TOPIC}-dlq");

    // Everything of part 1 gets through the group of three.
    let wait = |want: &HashSet<String>, what: &str, members: &mut [&mut Member]| {
        wait_for_values(&broker, &clean, want, what, members)
    };
    let oracle_rows = |p: usize| -> HashSet<String> {
        values(&broker, &format!("{TOPIC}-oracle-clean"))
            .into_iter()
            .filter(|r| part_ids[..=p].iter().any(|ids| ids.contains(&event_id(r))))
            .collect()
    };
    let run_oracle = || {
        let config = dir.path().join("oracle.toml");
        let example = std::fs::read_to_string(support::repo_root().join(EXAMPLE)).unwrap();
        let single = example
            .replace("scale_out = true", "bounded = true")
            .replace("${FRESHET_TOPIC}-clean", "${FRESHET_TOPIC}-oracle-clean")
            .replace("${FRESHET_TOPIC}-dlq", "${FRESHET_TOPIC}-oracle-dlq");
        assert_ne!(single, example);
        std::fs::write(&config, single).unwrap();
        let mut cmd = support::freshet();
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .env("KAFKA_BROKERS", broker.addr())
            .env("FRESHET_TOPIC", TOPIC)
            .env("FRESHET_GROUP", "oracle");
        let run = support::run_with_deadline(&mut cmd, support::JOB_DEADLINE);
        assert!(run.status.success(), "the single-process run: {}", run.describe());
    };
    run_oracle();
    let first = oracle_rows(0);
    assert!(first.len() > 9000, "part 1 should give about 10k results, the oracle has {}", first.len());
    wait(&first, "part 1 through three members", &mut [&mut p1, &mut p2, &mut p3]);

    // A member dies mid-run; what it had not committed is written again by
    // whoever reads its partitions next. On Apache Kafka a dead member's
    // partitions move when its session times out (10 s); tansu 0.6.0 then
    // forgets the member but hands the survivors their old partitions, so
    // here they move when the member comes back and the group rebalances.
    // It comes back after its session ended: a member that rejoins before
    // that shares the group with its dead self, whose partitions stall.
    produce(&parts[1]);
    p3.kill("p3");
    thread::sleep(Duration::from_secs(13));
    let mut p3 = Member::start(&broker, dir.path(), "p3");
    wait_for_settled_group(&mut [&mut p1, &mut p2, &mut p3]);
    run_oracle();
    wait(&oracle_rows(1), "part 2 across a SIGKILL and a rejoin", &mut [&mut p1, &mut p2, &mut p3]);

    // A member stops (Ctrl-C): it leaves the group and the other two take its partitions at once.
    let rebalances_before = p1.assignments();
    let status = std::process::Command::new("kill").args(["-INT", &p2.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while p2.alive() || p1.assigned().len() + p3.assigned().len() < 4 {
        assert!(Instant::now() < deadline, "p2's partitions did not move after it stopped:\n{}", p1.log());
        thread::sleep(Duration::from_millis(200));
    }
    produce(&parts[2]);
    run_oracle();
    let expected = oracle_rows(2);
    wait(&expected, "part 3 after a member left", &mut [&mut p1, &mut p3]);
    assert!(p1.assignments() > rebalances_before, "p1 followed the rebalance");

    // Exactly the oracle's results, deduplicated by key; and its dead letters.
    let mut have: Vec<String> = values(&broker, &clean).into_iter().collect();
    let mut want: Vec<String> = expected.into_iter().collect();
    have.sort();
    want.sort();
    support::assert_same_lines("the group's results vs one process", &have, &want);
    let (mut dead, mut dead_want): (Vec<String>, Vec<String>) = (
        values(&broker, &dlq).into_iter().collect(),
        values(&broker, &format!("{TOPIC}-oracle-dlq")).into_iter().collect(),
    );
    dead.sort();
    dead_want.sort();
    assert!(!dead_want.is_empty(), "the workload has malformed lines");
    support::assert_same_lines("the group's dead letters vs one process", &dead, &dead_want);
    assert!(!p3.assigned().is_empty(), "the member that was killed owns partitions again");
    let metrics = p1.metrics();
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}:\n{metrics}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("freshet_kafka_rebalances_total{"), p1.assignments() as f64, "{metrics}");
    assert_eq!(value("freshet_kafka_assigned_partitions{"), p1.assigned().len() as f64, "{metrics}");
}

/// With state: three processes run the reference job as a group
/// (examples/kafka-group-reference-job.toml: job (a) on each partition, job
/// (b) through the repartition topic by item_id) on a 4-partition topic keyed
/// by user_id. One is killed with SIGKILL mid-run and started again later;
/// its tasks go on from their changelogs. The results, deduplicated by key,
/// must equal check_ref_job.py's output exactly, and the dead letters name
/// their partition and offset.
#[test]
fn the_reference_job_as_a_group_of_three_with_one_killed_matches_the_flink_checker() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    let topic = "ref-group";
    let (input, expected) = crate::kafka::workload(&broker, dir.path(), topic, 31, 100_000);
    let job = (GROUP_EXAMPLE, topic, "refs");
    let serve = ["--serve"];
    let mut p1 = Member::spawn(&broker, dir.path(), "p1", job, &serve);
    let mut p2 = Member::spawn(&broker, dir.path(), "p2", job, &serve);
    let mut p3 = Member::spawn(&broker, dir.path(), "p3", job, &serve);

    // p3 dies 3 s after it started a task (checkpoints every 200 ms go to the
    // changelog meanwhile), mid-run.
    p3.wait_for_a_task("p3");
    thread::sleep(Duration::from_secs(3));
    // The processes report their tasks' restores and the group's rebalances
    // (p1 once it has started a task of its own).
    let names = ["freshet_task_restore_duration_seconds", "freshet_kafka_rebalances_total"];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = p1.metrics();
        if names.iter().all(|n| metrics.contains(n)) {
            break;
        }
        assert!(Instant::now() < deadline, "p1's /metrics lacks one of {names:?} after 60 s:\n{metrics}");
        thread::sleep(Duration::from_millis(200));
    }
    p3.kill("p3");
    // Back after its session ended (see the stateless test: tansu moves a dead
    // member's partitions only when the group changes).
    thread::sleep(Duration::from_secs(13));
    let mut p3 = Member::spawn(&broker, dir.path(), "p3", job, &serve);
    wait_for_success(&mut [&mut p1, &mut p2, &mut p3]);
    let logs = whole_logs(&[&p1, &p2, &p3]);
    assert!(
        // A task's checkpoint from the changelog is restored as a local one.
        logs.contains("Restoring from checkpoint."),
        "no task went on from a checkpoint in its changelog:\n{logs}"
    );
    crate::kafka::check_outputs(&broker, topic, &input, &expected, dir.path());
}

/// Standby copies: the reference group job with `standby = true` as two
/// processes. Each reads the changelogs as they are written and keeps every
/// task's newest checkpoint, so when p2 stops (Ctrl-C: its halves ship their
/// newest checkpoint, and it leaves the group) p1 restores p2's tasks from
/// its own copies, not by reading the changelog through the broker, and goes
/// on where p2 stopped: the outputs equal the checker's.
#[test]
fn a_member_that_stood_by_restores_the_tasks_of_one_that_stops_from_its_own_copies() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    let topic = "standby";
    let (input, expected) = crate::kafka::workload(&broker, dir.path(), topic, 47, 60_000);
    let example = std::fs::read_to_string(support::repo_root().join(GROUP_EXAMPLE)).unwrap();
    let config = dir.path().join("standby.toml");
    let with_standby = example.replace("scale_out = true\n", "scale_out = true\nstandby = true\n");
    assert_ne!(with_standby, example, "the example scales out");
    std::fs::write(&config, with_standby).unwrap();
    let job = (config.to_str().unwrap(), topic, "standbys");
    let mut p1 = Member::spawn(&broker, dir.path(), "p1", job, &[]);
    let mut p2 = Member::spawn(&broker, dir.path(), "p2", job, &[]);
    // Both halves of p2's tasks have a checkpoint in the changelog, which
    // p1's copies read as it is written; then p2 runs on a little more. A
    // rebalance meanwhile (a broker starved for longer than the session
    // timeout makes the group form again) starts the wait over with p2's new
    // tasks. A half has shipped when its latest start here was followed by
    // its first checkpoint.
    let deadline = Instant::now() + Duration::from_secs(180);
    let shipped = |log: &str, task: u32, half: &str| {
        let started = log.rfind(&format!("Task restored; starting. task={task} half={half} "));
        started.is_some_and(|at| {
            log[at..].lines().any(|l| {
                l.contains("Task half's first checkpoint is in the changelog.")
                    && l.contains(&format!("task={task} half={half} "))
            })
        })
    };
    let moved = 'settled: loop {
        wait_for_settled_group(&mut [&mut p1, &mut p2]);
        let moved = p2.assigned();
        loop {
            let log = p2.log();
            if moved.iter().all(|&t| shipped(&log, t, "Input") && shipped(&log, t, "Repartitioned")) {
                break 'settled moved;
            }
            assert!(p2.alive(), "p2 exited before its tasks shipped a checkpoint:\n{log}");
            assert!(Instant::now() < deadline, "p2's tasks shipped no checkpoint within 180 s:\n{log}");
            if p2.assigned() != moved {
                eprintln!("p2's tasks moved from {moved:?} before they shipped a checkpoint; waiting again");
                continue 'settled;
            }
            thread::sleep(Duration::from_millis(100));
        }
    };
    thread::sleep(Duration::from_secs(1));
    let status = std::process::Command::new("kill").args(["-INT", &p2.child.id().to_string()]).status().unwrap();
    assert!(status.success());
    wait_for_success(&mut [&mut p1, &mut p2]);
    let log = p1.log();
    let restores: Vec<&str> = log.lines().filter(|l| l.contains("Task restored; starting.")).collect();
    for task in &moved {
        for half in ["Input", "Repartitioned"] {
            let from_standby = restores.iter().any(|l| {
                l.contains(&format!("task={task} half={half} checkpoint="))
                    && l.contains("from=\"standby\"")
                    && !l.contains("checkpoint=None")
            });
            assert!(
                from_standby,
                "p1 did not restore the {half} half of p2's task {task} from its standby copy:\n{}\n---- p2:\n{}",
                restores.join("\n"),
                p2.log()
            );
        }
    }
    crate::kafka::check_outputs(&broker, topic, &input, &expected, dir.path());
}

/// A bounded group that loses a member for good: p2 is killed with SIGKILL
/// mid-run and never comes back. p1 must not end with p2's tasks undone
/// (tansu moves a dead member's partitions only when the group changes):
/// it finishes every partition itself, and the outputs equal the checker's.
#[test]
fn a_bounded_group_that_loses_a_member_for_good_still_reads_every_partition() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    let topic = "lost-member";
    let (input, expected) = crate::kafka::workload(&broker, dir.path(), topic, 41, 60_000);
    let job = (GROUP_EXAMPLE, topic, "survivors");
    let mut p1 = Member::spawn(&broker, dir.path(), "p1", job, &[]);
    let mut p2 = Member::spawn(&broker, dir.path(), "p2", job, &[]);
    p2.wait_for_a_task("p2");
    thread::sleep(Duration::from_secs(2));
    p2.kill("p2");
    wait_for_success(&mut [&mut p1]);
    crate::kafka::check_outputs(&broker, topic, &input, &expected, dir.path());
}

/// A bounded group that loses a member after its tasks' input halves ended
/// and before their repartitioned halves did: those wait for every upstream
/// task's end, and one partition (user `u0`'s, 40,000 events more than the
/// others) is likely read by the survivor long after the member's own
/// partitions end. The member is killed with SIGKILL once it said both its
/// input halves ended (their end markers written), for good. Its input halves
/// are done, so nothing the survivor reads of their partitions waits for
/// them; the survivor must still not end before the member's repartitioned
/// halves are done (the group's task statuses), and must take them over
/// once the member's claim goes stale: the outputs equal the checker's.
#[test]
fn a_bounded_group_that_loses_a_member_between_its_halves_ends_still_completes_every_task() {
    use freshet_io::kafka::keys::Partitioner;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    let topic = "lost-between";
    // The workload, then 40,000 events of one user after it (in event time too).
    let (workload, filler) = (dir.path().join("workload.ndjson"), dir.path().join("filler.ndjson"));
    support::generate_events(&workload, &support::workload_args(43, 40_000, &["--rate-per-s", "100"]));
    let after_workload = (1_767_225_600_000_i64 + 500_000).to_string();
    let one_user = ["--users", "1", "--rate-per-s", "100", "--start-ms", after_workload.as_str()];
    support::generate_events(&filler, &support::workload_args(44, 40_000, &one_user));
    let input = dir.path().join("in.ndjson");
    let bytes = [std::fs::read(&workload).unwrap(), std::fs::read(&filler).unwrap()].concat();
    std::fs::write(&input, &bytes).unwrap();
    let expected = crate::oracle::compute(&bytes);
    assert_eq!(expected.late_events, 0, "the workload must have no late events");
    let heavy = Partitioner::Murmur2Random.partition(b"u0", 4);
    kafka_tool(&broker, &["create-topic", "--topic", topic, "--partitions", "4"]);
    kafka_tool(&broker, &["produce", "--topic", topic, "--key-field", "user_id", input.to_str().unwrap()]);

    let job = (GROUP_EXAMPLE, topic, "halfway");
    let p1 = Member::spawn(&broker, dir.path(), "p1", job, &[]);
    let p2 = Member::spawn(&broker, dir.path(), "p2", job, &[]);
    // The victim is the member that does not read the heavy partition.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut victim, mut survivor) = loop {
        let (a1, a2) = (p1.assigned(), p2.assigned());
        if a1.len() == 2 && a2.len() == 2 {
            break if a1.contains(&heavy) { (p2, p1) } else { (p1, p2) };
        }
        assert!(Instant::now() < deadline, "no two-and-two assignment within 120 s:\n{}\n{}", p1.log(), p2.log());
        thread::sleep(Duration::from_millis(100));
    };
    let ended = |m: &Member, half: &str| {
        m.log().lines().filter(|l| l.contains("Task half read its input to the end.") && l.contains(half)).count()
    };
    while ended(&victim, "half=Input") < 2 {
        assert!(victim.alive(), "the victim exited early:\n{}", victim.log());
        assert!(Instant::now() < deadline, "the victim's input halves did not end:\n{}", victim.log());
        thread::sleep(Duration::from_millis(50));
    }
    victim.kill("the victim");
    assert_eq!(
        ended(&victim, "half=Repartitioned"),
        0,
        "the victim's repartitioned halves ended before the heavy partition did: no loss to test:\n{}",
        victim.log()
    );
    wait_for_success(&mut [&mut survivor]);
    crate::kafka::check_outputs(&broker, topic, &input, &expected, dir.path());
    let log = survivor.log();
    assert!(log.contains("taken for one nobody runs"), "the survivor did not take the victim's tasks:\n{log}");
}

/// Dedup in a group: the reference group job with a dedup stage on
/// `event_id`, over a workload whose duplicates repeat one of the last
/// thousand lines verbatim (5 % of lines), run by two processes, one killed
/// with SIGKILL mid-run and started again. Each task half keeps its own
/// dedup tables in the checkpoints its changelog holds (the input half for
/// job (a); the repartitioned half for job (b), which reads every copy from
/// the repartition topic), so after the move the outputs, deduplicated by
/// key, equal the checker's over the input without its duplicates.
#[test]
fn dedup_in_a_group_with_a_member_killed_drops_exactly_the_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    let topic = "dedup-group";
    let input = dir.path().join("in.ndjson");
    let args = support::workload_args(37, 60_000, &["--rate-per-s", "100", "--duplicate-rate", "0.05"]);
    support::generate_events(&input, &args);
    let (clean, dropped) = crate::dedup::without_duplicates(&std::fs::read(&input).unwrap());
    assert!(dropped > 1000, "the workload has only {dropped} duplicates; the test is weak");
    let clean_input = dir.path().join("clean.ndjson");
    std::fs::write(&clean_input, &clean).unwrap();
    let expected = crate::oracle::compute(&clean);
    assert_eq!(expected.late_events, 0, "the workload must have no late events");
    kafka_tool(&broker, &["create-topic", "--topic", topic, "--partitions", "4"]);
    kafka_tool(&broker, &["produce", "--topic", topic, "--key-field", "user_id", input.to_str().unwrap()]);
    let config = dir.path().join("dedup-group.toml");
    std::fs::write(&config, crate::dedup::with_dedup_stage(&support::repo_root().join(GROUP_EXAMPLE))).unwrap();
    let job = (config.to_str().unwrap(), topic, "dedups");
    let mut p1 = Member::spawn(&broker, dir.path(), "p1", job, &[]);
    let mut p2 = Member::spawn(&broker, dir.path(), "p2", job, &[]);

    p2.wait_for_a_task("p2");
    thread::sleep(Duration::from_secs(2));
    p2.kill("p2");
    // Back after its session ended (tansu moves a dead member's partitions
    // only when the group changes).
    thread::sleep(Duration::from_secs(13));
    let mut p2 = Member::spawn(&broker, dir.path(), "p2", job, &[]);
    wait_for_success(&mut [&mut p1, &mut p2]);
    let logs = whole_logs(&[&p1, &p2]);
    assert!(logs.contains("Restoring from checkpoint."), "no task went on from a checkpoint in its changelog:\n{logs}");
    crate::kafka::check_outputs(&broker, topic, &clean_input, &expected, dir.path());
}

/// Watermarks and idleness travel in-band through the repartition topic.
/// One process runs a job whose per-item counts (1-minute windows) are fed
/// through it. As soon as its tasks run, 3 users, one in each of partitions
/// 0..2 of its 4-partition topic, each view an item of their own, each item
/// in another partition of the repartition topic: a reader gets records from
/// one upstream task only, the two others tell it their watermarks with
/// markers, and the fourth (partition 3, no events) says it is idle after
/// its idle timeout (5 s). The job is unbounded, so only those markers let a
/// reader's watermark pass: every window below the final watermark must
/// close and be written with its count, and the last one, still open, must
/// not. (The events go in before the tasks' inputs fall idle: a reader whose
/// upstream said idle and then sends events behind the others' watermarks
/// counts them late, as Flink's idleness does; an earlier version of this
/// test let all four fall idle first and failed now and then that way.)
#[test]
fn a_repartitioned_task_follows_the_watermarks_of_upstream_tasks_that_send_it_nothing() {
    use freshet_io::kafka::keys::Partitioner;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    let topic = "marks";
    // The first id `{prefix}N` in each of partitions 0..3.
    let one_per_partition = |partitioner: Partitioner, prefix: &str| -> Vec<String> {
        (0..3)
            .map(|p| (0..).map(|n| format!("{prefix}{n}")).find(|id| partitioner.partition(id.as_bytes(), 4) == p))
            .map(Option::unwrap)
            .collect()
    };
    // Users by the producer's partitioner; items as the repartition topic is written.
    let users = one_per_partition(Partitioner::Murmur2Random, "u");
    let items = one_per_partition(Partitioner::ConsistentRandom, "i");
    kafka_tool(&broker, &["create-topic", "--topic", topic, "--partitions", "4"]);
    let config = dir.path().join("item-views.toml");
    std::fs::write(&config, ITEM_VIEWS_JOB).unwrap();
    let mut p1 = Member::spawn(&broker, dir.path(), "p1", (config.to_str().unwrap(), topic, "markers"), &[]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while p1.log().matches("Repartition topic assigned").count() < 4 {
        assert!(p1.alive() && Instant::now() < deadline, "the four tasks did not start:\n{}", p1.log());
        thread::sleep(Duration::from_millis(100));
    }

    // Every second for 10 minutes of event time, user p views item p.
    let mut input = String::new();
    for second in 0..600 {
        for (user, item) in users.iter().zip(&items) {
            let ts = second * 1000;
            input.push_str(&format!(
                "{{\"type\":\"view\",\"user_id\":\"{user}\",\"item_id\":\"{item}\",\"ts\":{ts}}}\n"
            ));
        }
    }
    let path = dir.path().join("views.ndjson");
    std::fs::write(&path, input).unwrap();
    kafka_tool(&broker, &["produce", "--topic", topic, "--key-field", "user_id", path.to_str().unwrap()]);
    // Each upstream's watermark ends at 599 s - 1 s - 1 ms: minutes 0..9 close, minute 9 stays open.
    let want: HashSet<String> = items
        .iter()
        .flat_map(|item| (0..9).map(move |m| format!("{},{},{item},60", m * 60_000, (m + 1) * 60_000)))
        .collect();
    let out = format!("{topic}-item-views");
    wait_for_values(&broker, &out, &want, "the closed windows of every item", &mut [&mut p1]);
    assert!(p1.log().contains("The task's input is idle"), "no task said it is idle:\n{}", p1.log());
    // A beat more: nothing else comes (the open window is not written).
    thread::sleep(Duration::from_secs(2));
    let have = values(&broker, &out);
    let extra: Vec<&String> = have.difference(&want).collect();
    assert!(extra.is_empty(), "windows written that are not closed: {extra:?}");
}

/// Per item, its views in 1-minute windows, fed through the repartition topic.
const ITEM_VIEWS_JOB: &str = r#"
[pipeline]
dead_letter = "dlq"
checkpoint_interval = "${FRESHET_CHECKPOINT_INTERVAL:-1s}"

[event_time]
field = "ts"
max_out_of_orderness = "1s"
idle_timeout = "5s"

[sources.events]
type = "kafka"
brokers = "${KAFKA_BROKERS}"
topic = "${FRESHET_TOPIC}"
group = "${FRESHET_GROUP}"
scale_out = true
partition_key = "user_id"

[sinks.item_views]
type = "kafka"
brokers = "${KAFKA_BROKERS}"
topic = "${FRESHET_TOPIC}-item-views"
format = "csv"
partitions = 4
compacted = true

[sinks.dlq]
type = "kafka"
brokers = "${KAFKA_BROKERS}"
topic = "${FRESHET_TOPIC}-dlq"
partitions = 1

[[flows]]
name = "views"
when = { field = "type", eq = "view" }
fields = { user_id = "string", item_id = "string", ts = "integer" }

[[features]]
name = "item_views"
flow = "views"
key = ["item_id"]
window = { type = "tumbling", size = "1m" }
aggregate = "count"
sink = "item_views"
serve = false
"#;

/// Reads across a group: two processes run examples/kafka-group-features.toml
/// (per user and type, and per item, counts of every event so far) on a
/// 4-partition topic keyed by user_id. Users and items, asked of either
/// process, must have the counts of their events in the input, and the
/// answer must come from the one process that runs the entity's task:
/// forwarded there when asked of the other. Then one process stops; the
/// other takes its tasks (restoring them from their changelogs) and answers
/// every read itself, with the same counts.
#[test]
fn a_read_sent_to_any_member_of_a_group_is_answered_by_the_owner_of_its_task() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    let topic = "reads";
    let (_, expected) = crate::kafka::workload(&broker, dir.path(), topic, 43, 20_000);
    let (users, items) = totals(&expected);
    let job = ("examples/kafka-group-features.toml", topic, "readers");
    let mut p1 = Member::spawn(&broker, dir.path(), "p1", job, &[]);
    let mut p2 = Member::spawn(&broker, dir.path(), "p2", job, &[]);
    let (a1, a2) = (wait_for_addr(&mut p1), wait_for_addr(&mut p2));
    // Every 10th user and item, in id order.
    let reads: Vec<(String, Counts)> = users
        .iter()
        .step_by(10)
        .map(|(u, c)| (format!("/v1/users/{u}/features"), Counts::User(c.clone())))
        .chain(items.iter().step_by(10).map(|(i, n)| (format!("/v1/items/{i}/features"), Counts::Item(*n))))
        .collect();
    assert!(reads.len() > 100, "too few entities to read: {}", reads.len());

    let served = wait_for_reads(&[&a1, &a2], &reads, &mut [&mut p1, &mut p2]);
    // One owner per entity, whichever process was asked; each process owns some.
    let mut owners = BTreeSet::new();
    for (path, by) in &served {
        assert_eq!(
            by[0], by[1],
            "{path} was answered by {} when asked of {a1}, by {} when asked of {a2}",
            by[0], by[1]
        );
        owners.insert(by[0].clone());
    }
    assert_eq!(owners, BTreeSet::from([a1.clone(), a2.clone()]), "both processes own tasks read");

    // p2 stops (Ctrl-C): p1 takes its tasks and answers everything itself.
    let status = std::process::Command::new("kill").args(["-INT", &p2.child.id().to_string()]).status().unwrap();
    assert!(status.success(), "could not send SIGINT to p2");
    let deadline = Instant::now() + Duration::from_secs(60);
    while p2.alive() {
        assert!(Instant::now() < deadline, "p2 did not stop within 60 s of a Ctrl-C:\n{}", p2.log());
        thread::sleep(Duration::from_millis(100));
    }
    let status = p2.child.wait().unwrap();
    assert!(status.success(), "p2 failed to stop ({status}):\n{}", p2.log());
    let served = wait_for_reads(&[&a1], &reads, &mut [&mut p1]);
    for (path, by) in &served {
        assert_eq!(by[0], a1, "{path} was answered by {} after p2 stopped, not by p1 ({a1})", by[0]);
    }
    // A repartitioned half moved from p2 goes on from its checkpoint's
    // position in the repartition topic, not from the start.
    let log = p1.log();
    let froms: Vec<u64> = log
        .lines()
        .filter(|l| l.contains("Repartition topic assigned."))
        .filter_map(|l| l.split(" from=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    assert!(
        froms.iter().any(|&from| from > 0),
        "no repartitioned half of p1 resumed past the start of its partition (from = {froms:?}):\n{log}"
    );
}

/// A recommender in a group: every process keeps a replica of it over every
/// partition and answers recommendations itself. Thirty users view `alpha`
/// then `beta`, and twelve probe users view `alpha` (users and probes
/// spread over the 4 partitions by their ids): asked of either process,
/// `beta` is every probe's first recommendation, proposed by co-occurrence,
/// and `alpha`'s first similar item, each answered by the process asked.
/// Then one process is killed (SIGKILL) and started again: its replica goes
/// on from its checkpoint, learns what comes after (thirty users view
/// `gamma` then `delta`; twelve more probes view `gamma` and get `delta`),
/// and still knows what came before. Before the kill, a probe is forgotten
/// through one process (`DELETE /v1/users/{id}`: a tombstone in the topic):
/// both processes then find none of its features and give it a cold start,
/// as the restarted one still does. Last, a new process's replica starts
/// from the checkpoint a replica shipped, and answers as the others do.
#[test]
fn every_member_of_a_group_answers_recommendations_from_its_own_replica_of_the_recommender() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    let topic = "recs";
    kafka_tool(&broker, &["create-topic", "--topic", topic, "--partitions", "4"]);
    let probes = |name: &str| (0..12).map(|i| format!("{name}-{i}")).collect::<Vec<_>>();
    let produce = |name: &str, pair: (&str, &str), probe: &str, from_ms: i64| {
        let event = |user: &str, item: &str, at: i64| {
            serde_json::json!({ "type": "view", "user_id": user, "item_id": item, "ts": from_ms + at }).to_string()
        };
        let mut lines: Vec<String> = (0..30)
            .flat_map(|u| {
                let user = format!("{name}-user-{u}");
                [event(&user, pair.0, 2 * u), event(&user, pair.1, 2 * u + 1)]
            })
            .collect();
        lines.extend(probes(probe).iter().map(|p| event(p, pair.0, 100)));
        let file = dir.path().join(format!("{name}.ndjson"));
        std::fs::write(&file, lines.join("\n") + "\n").unwrap();
        kafka_tool(&broker, &["produce", "--topic", topic, "--key-field", "user_id", file.to_str().unwrap()]);
    };
    let job = ("examples/kafka-group-features.toml", topic, "recommenders");
    let mut p1 = Member::spawn(&broker, dir.path(), "p1", job, &[]);
    let mut p2 = Member::spawn(&broker, dir.path(), "p2", job, &[]);
    produce("first", ("alpha", "beta"), "probe-1", 1_700_000_000_000);
    let (a1, a2) = (wait_for_addr(&mut p1), wait_for_addr(&mut p2));
    let asks = |probe: &str, (seed, want): (&'static str, &'static str)| {
        let mut asks: Vec<(String, String, &str)> = probes(probe)
            .into_iter()
            .map(|p| ("/v1/recommend".to_owned(), format!(r#"{{"user_id":"{p}","k":3}}"#), want))
            .collect();
        asks.push((format!("/v1/items/{seed}/similar?k=3"), String::new(), want));
        asks
    };
    let first = asks("probe-1", ("alpha", "beta"));
    wait_for_top_items(&[&a1, &a2], &first, &mut [&mut p1, &mut p2]);
    // The replica's reading is measured apart from the tasks' (its own source label).
    let metrics = p1.metrics();
    assert!(metrics.contains(r#"source="events-recommender""#), "no replica metrics:\n{metrics}");
    // What a single process takes over HTTP, a group takes from its topic.
    let (status, refused) = support::request(&a1, "POST", "/v1/events", "application/json", "{}");
    assert!(status == 404 && refused.contains("from its Kafka topic"), "{status} {refused}");

    // A click that carries a list's recommendation id, through the topic:
    // the process that served the list attributes it; the other one, whose
    // replica learns the click too, counts an id it did not serve. (A new
    // user clicks, so that the probes' lists stay as they are.)
    let (status, served) = support::request(&a2, "GET", "/v1/items/alpha/similar?k=3", "text/plain", "");
    assert_eq!(status, 200, "{served}");
    let served: serde_json::Value = serde_json::from_str(&served).unwrap();
    assert_eq!(served["items"][0]["item_id"], "beta", "{served}");
    let click = serde_json::json!({ "type": "click", "user_id": "clicker", "item_id": "beta",
        "ts": 1_700_000_000_200i64, "recommendation_id": served["recommendation_id"] });
    let file = dir.path().join("click.ndjson");
    std::fs::write(&file, format!("{click}\n")).unwrap();
    kafka_tool(&broker, &["produce", "--topic", topic, "--key-field", "user_id", file.to_str().unwrap()]);
    let attributed = r#"freshet_recommendation_interactions_total{placement="similar",type="click"} 1"#;
    let elsewhere = r#"freshet_recommendation_unattributed_total{reason="not_served_here"} 1"#;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(p2.metrics().contains(attributed) && p1.metrics().contains(elsewhere)) {
        assert!(Instant::now() < deadline, "the click not attributed by p2:\n{}", p2.metrics());
        thread::sleep(Duration::from_millis(200));
    }
    assert!(p2.metrics().contains(r#"freshet_recommendation_interactions_by_position_total{position="1"} 1"#));

    // probe-1-0 is forgotten through p1: its features (read from its task's
    // owner) and its recommender profile (in each replica) go.
    let probe = |addr: &str| -> (serde_json::Value, serde_json::Value) {
        let (status, features) = support::request(addr, "GET", "/v1/users/probe-1-0/features", "text/plain", "");
        let found = match status {
            200 => serde_json::from_str::<serde_json::Value>(&features).unwrap()["found"].clone(),
            _ => serde_json::Value::String(format!("{status} {features}")),
        };
        let body = r#"{"user_id":"probe-1-0","k":3}"#;
        let (status, recs) = support::request(addr, "POST", "/v1/recommend", "application/json", body);
        assert_eq!(status, 200, "recommendations for probe-1-0 from {addr}: {recs}");
        (found, serde_json::from_str::<serde_json::Value>(&recs).unwrap()["cold_start"].clone())
    };
    let wait_for = |want: (bool, bool), what: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        for addr in [&a1, &a2] {
            loop {
                let (found, cold) = probe(addr);
                if found == want.0 && cold == want.1 {
                    break;
                }
                assert!(Instant::now() < deadline, "{what} at {addr}: found {found}, cold start {cold}");
                thread::sleep(Duration::from_millis(200));
            }
        }
    };
    wait_for((true, false), "probe-1-0 not known before the forget");
    let (status, forgot) = support::request(&a1, "DELETE", "/v1/users/probe-1-0", "text/plain", "");
    assert_eq!(status, 202, "{forgot}");
    wait_for((false, true), "probe-1-0 not forgotten");

    p2.kill("p2");
    let mut p2 = Member::spawn(&broker, dir.path(), "p2", job, &[]);
    let a2 = wait_for_addr(&mut p2);
    produce("second", ("gamma", "delta"), "probe-2", 1_700_000_100_000);
    let second = asks("probe-2", ("gamma", "delta"));
    wait_for_top_items(&[&a1, &a2], &second, &mut [&mut p1, &mut p2]);
    // What came before the kill is still known, and the forget still holds.
    wait_for_top_items(&[&a2], &first[1..], &mut [&mut p2]);
    let (status, recs) =
        support::request(&a2, "POST", "/v1/recommend", "application/json", r#"{"user_id":"probe-1-0"}"#);
    assert_eq!(
        (status, serde_json::from_str::<serde_json::Value>(&recs).unwrap()["cold_start"].clone()),
        (200, true.into()),
        "{recs}"
    );
    let log = p2.log();
    let resumed = log.lines().any(|l| l.contains("The replica runs.") && l.contains("checkpoint="));
    assert!(resumed, "p2's replica did not go on from its checkpoint after the restart:\n{log}");

    // A third process, new: its replica starts from a checkpoint another replica shipped.
    let mut p3 = Member::spawn(&broker, dir.path(), "p3", job, &[]);
    let a3 = wait_for_addr(&mut p3);
    let everything: Vec<_> = first[1..].iter().chain(&second).cloned().collect();
    wait_for_top_items(&[&a3], &everything, &mut [&mut p3]);
    let log = p3.log();
    assert!(log.contains("The replica starts from a shipped checkpoint."), "p3 read the topic anew:\n{log}");
}

/// Forgetting an item in a group: examples/kafka-group-features.toml with
/// `forget_on_tombstone = "item"`. The topic is keyed by user, so an item's
/// views are counted by the repartitioned task its id picks, and its
/// tombstone lands in the input partition the producers' partitioner picks:
/// that task passes the forget on through the repartition topic. Twenty-four
/// users view eight items; three items are forgotten through one process,
/// and both processes then find none of their views while the other five
/// keep theirs. One process is killed (SIGKILL) and the users view a
/// forgotten item and a kept one again: after the restart, from either
/// process, the forgotten item counts only the views after its forget, the
/// kept one all of them, and the other two forgotten items stay forgotten.
/// Every process's replica of the recommender forgets them too: they leave
/// i3's similar items (all seven were there), and stay out after the
/// restart (its replica restored from its checkpoint).
#[test]
fn an_item_forgotten_in_a_group_is_forgotten_by_the_task_that_counts_its_views() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    let topic = "forget-items";
    kafka_tool(&broker, &["create-topic", "--topic", topic, "--partitions", "4"]);
    let example = std::fs::read_to_string(support::repo_root().join("examples/kafka-group-features.toml")).unwrap();
    let config = dir.path().join("forget-items.toml");
    let forgets_items = example.replace(r#"forget_on_tombstone = "user""#, r#"forget_on_tombstone = "item""#);
    assert_ne!(forgets_items, example, "the example no longer forgets on tombstones");
    std::fs::write(&config, forgets_items).unwrap();
    let produce = |name: &str, items: &[&str], from_ms: i64| {
        let lines: Vec<String> = (0..24)
            .flat_map(|u| items.iter().enumerate().map(move |(k, item)| (u, k, item)))
            .map(|(u, k, item)| {
                let at = from_ms + (u * items.len() + k) as i64;
                serde_json::json!({ "type": "view", "user_id": format!("u{u}"), "item_id": item, "ts": at }).to_string()
            })
            .collect();
        let file = dir.path().join(format!("{name}.ndjson"));
        std::fs::write(&file, lines.join("\n") + "\n").unwrap();
        kafka_tool(&broker, &["produce", "--topic", topic, "--key-field", "user_id", file.to_str().unwrap()]);
    };
    let items: Vec<String> = (0..8).map(|i| format!("i{i}")).collect();
    produce("first", &items.iter().map(String::as_str).collect::<Vec<_>>(), 1_700_000_000_000);
    let job = (config.to_str().unwrap(), topic, "item-forgetters");
    let mut p1 = Member::spawn(&broker, dir.path(), "p1", job, &[]);
    let mut p2 = Member::spawn(&broker, dir.path(), "p2", job, &[]);
    let (a1, a2) = (wait_for_addr(&mut p1), wait_for_addr(&mut p2));
    let counted = |item: &str, views: u64| (format!("/v1/items/{item}/features"), Counts::Item(views));
    let all: Vec<_> = items.iter().map(|i| counted(i, 24)).collect();
    wait_for_reads(&[&a1, &a2], &all, &mut [&mut p1, &mut p2]);
    // Every replica of the recommender finds all seven others similar to i3.
    let others: Vec<&str> = items.iter().map(String::as_str).filter(|i| *i != "i3").collect();
    wait_for_similar(&[&a1, &a2], "i3", (&others, &[]), &mut [&mut p1, &mut p2]);

    let (status, refused) = support::request(&a1, "DELETE", "/v1/users/u1", "text/plain", "");
    assert!(status == 404 && refused.contains(r#"forget_on_tombstone = \"user\""#), "{status} {refused}");
    let forgotten = ["i0", "i1", "i2"];
    for item in forgotten {
        let (status, body) = support::request(&a1, "DELETE", &format!("/v1/items/{item}"), "text/plain", "");
        assert_eq!(status, 202, "forgetting {item}: {body}");
    }
    let kept: Vec<_> = items[3..].iter().map(|i| counted(i, 24)).collect();
    wait_for_forgotten(&[&a1, &a2], &forgotten, &mut [&mut p1, &mut p2]);
    wait_for_reads(&[&a1, &a2], &kept, &mut [&mut p1, &mut p2]);
    // Every replica forgot them too: no longer similar to i3, the others still.
    wait_for_similar(&[&a1, &a2], "i3", (&others[3..], &forgotten), &mut [&mut p1, &mut p2]);

    p2.kill("p2");
    produce("second", &["i0", "i3"], 1_700_000_100_000);
    let mut p2 = Member::spawn(&broker, dir.path(), "p2", job, &[]);
    let a2 = wait_for_addr(&mut p2);
    let after: Vec<_> =
        [counted("i0", 24), counted("i3", 48)].into_iter().chain(items[4..].iter().map(|i| counted(i, 24))).collect();
    wait_for_reads(&[&a1, &a2], &after, &mut [&mut p1, &mut p2]);
    wait_for_forgotten(&[&a1, &a2], &forgotten[1..], &mut [&mut p1, &mut p2]);
    // The restarted replica, from its checkpoint, still has them forgotten.
    wait_for_similar(&[&a1, &a2], "i3", (&others[3..], &forgotten[1..]), &mut [&mut p1, &mut p2]);
}

/// Asks every one of `addrs` for `item`'s similar items until they hold
/// every one of `present` and none of `absent` (within 120 s).
fn wait_for_similar(addrs: &[&str], item: &str, (present, absent): (&[&str], &[&str]), members: &mut [&mut Member]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for addr in addrs {
        loop {
            let (status, body) = support::request(addr, "GET", &format!("/v1/items/{item}/similar?k=20"), "", "");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let similar: Vec<&str> =
                v["items"].as_array().into_iter().flatten().filter_map(|i| i["item_id"].as_str()).collect();
            if status == 200
                && present.iter().all(|p| similar.contains(p))
                && !absent.iter().any(|a| similar.contains(a))
            {
                break;
            }
            still_waiting(members, deadline, || {
                format!(
                    "{item}'s similar items at {addr}, after 120 s: {status} {body}\nwant {present:?}, not {absent:?}"
                )
            });
            thread::sleep(Duration::from_millis(300));
        }
    }
}

/// Asks every one of `addrs` for each of `items`' features until none is
/// found (within 120 s).
fn wait_for_forgotten(addrs: &[&str], items: &[&str], members: &mut [&mut Member]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for addr in addrs {
        for item in items {
            loop {
                let (status, body) = support::request(addr, "GET", &format!("/v1/items/{item}/features"), "", "");
                let found = serde_json::from_str::<serde_json::Value>(&body).ok().map(|v| v["found"].clone());
                if status == 200 && found == Some(false.into()) {
                    break;
                }
                still_waiting(members, deadline, || {
                    format!("{item} still found at {addr} after 120 s: {status} {body}")
                });
                thread::sleep(Duration::from_millis(300));
            }
        }
    }
}

/// Lookup tables in a group (examples/kafka-group-lookup.toml): every
/// process keeps the whole table. Sixteen items' upserts (4 categories) are
/// keyed by item id, so they lie in other partitions than most of the forty
/// users who view them (keyed by user id); each user's `user_categories`
/// feature, read from either process, must count every view under its
/// item's category (a view whose row a task cannot find goes to the dead
/// letters, and its count is missing). An item published while the group
/// runs is looked up by a view that follows it; one process killed with
/// SIGKILL and started again restores its table from its replica's
/// checkpoint, and the tasks of both find every row when each user views
/// one more item.
#[test]
fn a_lookup_in_a_group_finds_rows_written_to_any_partition() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("broker"));
    let topic = "lookups";
    kafka_tool(&broker, &["create-topic", "--topic", topic, "--partitions", "4"]);
    let produce = |name: &str, key: &str, lines: &[serde_json::Value]| {
        let file = dir.path().join(format!("{name}.ndjson"));
        let text: String = lines.iter().map(|l| l.to_string() + "\n").collect();
        std::fs::write(&file, text).unwrap();
        kafka_tool(&broker, &["produce", "--topic", topic, "--key-field", key, file.to_str().unwrap()]);
    };
    let t0 = 1_700_000_000_000i64;
    let upsert = |item: usize, category: &str, at: i64| serde_json::json!({ "type": "item_upsert", "item_id": format!("i{item}"), "category": category, "ts": t0 + at });
    let view = |user: usize, item: usize, at: i64| serde_json::json!({ "type": "view", "user_id": format!("u{user}"), "item_id": format!("i{item}"), "ts": t0 + at });
    produce("catalog", "item_id", &(0..16).map(|i| upsert(i, &format!("c{}", i % 4), i as i64)).collect::<Vec<_>>());
    let mut expected: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    let mut views = Vec::new();
    for user in 0..40 {
        for j in 0..3 {
            let item = (user * 3 + j * 5) % 16;
            views.push(view(user, item, 100 + user as i64));
            *expected.entry(format!("u{user}")).or_default().entry(format!("c{}", item % 4)).or_default() += 1;
        }
    }
    produce("views", "user_id", &views);

    let job = ("examples/kafka-group-lookup.toml", topic, "lookups");
    let mut p1 = Member::spawn(&broker, dir.path(), "p1", job, &[]);
    let mut p2 = Member::spawn(&broker, dir.path(), "p2", job, &[]);
    let (a1, a2) = (wait_for_addr(&mut p1), wait_for_addr(&mut p2));
    wait_for_categories(&[&a1, &a2], &expected, &mut [&mut p1, &mut p2]);
    for (name, m) in [("p1", &p1), ("p2", &p2)] {
        assert!(m.log().contains("The lookup tables are loaded"), "{name} never said its table was loaded");
    }

    // A new item, then (once the replicas have had time to read it) a view of it.
    produce("new-item", "item_id", &[upsert(16, "c9", 1_000)]);
    thread::sleep(Duration::from_secs(5));
    produce("new-view", "user_id", &[view(0, 16, 1_001)]);
    *expected.get_mut("u0").unwrap().entry("c9".into()).or_default() += 1;
    wait_for_categories(&[&a1, &a2], &expected, &mut [&mut p1, &mut p2]);

    p2.kill("p2");
    // Back after its session ended (tansu moves a dead member's partitions
    // only when the group changes).
    thread::sleep(Duration::from_secs(13));
    let mut p2 = Member::spawn(&broker, dir.path(), "p2", job, &[]);
    let a2 = wait_for_addr(&mut p2);
    // Every user views one more item: the tasks of both processes look rows up.
    let mut after: Vec<serde_json::Value> = (0..40).map(|user| view(user, (user + 7) % 17, 2_000)).collect();
    after.push(view(1, 16, 2_001));
    produce("after-restart", "user_id", &after);
    for user in 0..40 {
        let item = (user + 7) % 17;
        let category = if item == 16 { "c9".to_owned() } else { format!("c{}", item % 4) };
        *expected.get_mut(&format!("u{user}")).unwrap().entry(category).or_default() += 1;
    }
    *expected.get_mut("u1").unwrap().entry("c9".into()).or_default() += 1;
    wait_for_categories(&[&a1, &a2], &expected, &mut [&mut p1, &mut p2]);
    let log = p2.log();
    let resumed = log.lines().any(|l| l.contains("The replica runs.") && l.contains("checkpoint="));
    assert!(resumed, "p2's replica did not restore its table from its checkpoint after the restart:\n{log}");
}

/// Asks every one of `addrs` for every user's `user_categories` until each
/// answer has the expected counts per category (within 120 s).
fn wait_for_categories(
    addrs: &[&str],
    expected: &BTreeMap<String, BTreeMap<String, u64>>,
    members: &mut [&mut Member],
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let read = |body: &str| -> Option<BTreeMap<String, u64>> {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let groups = v["features"]["user_categories"]["groups"].as_array()?;
        groups
            .iter()
            .map(|g| Some((g["key"]["category"].as_str()?.to_owned(), g["current"]["value"].as_u64()?)))
            .collect()
    };
    loop {
        let mut last_miss = None;
        for addr in addrs {
            for (user, want) in expected {
                let (status, body) =
                    support::request(addr, "GET", &format!("/v1/users/{user}/features"), "text/plain", "");
                if status != 200 || read(&body).as_ref() != Some(want) {
                    last_miss = Some(format!("{user} from {addr}: {status} {body}\nexpected {want:?}"));
                }
            }
        }
        let Some(miss) = last_miss else { return };
        still_waiting(members, deadline, || format!("categories still wrong after 120 s; the last:\n{miss}"));
        thread::sleep(Duration::from_millis(500));
    }
}

/// Fails if a member exited, or, once `deadline` has passed, with `what`
/// and every member's log.
fn still_waiting(members: &mut [&mut Member], deadline: Instant, what: impl FnOnce() -> String) {
    for m in members.iter_mut() {
        assert!(m.alive(), "a member exited:\n{}", m.log());
    }
    if Instant::now() >= deadline {
        let logs: Vec<String> = members.iter().map(|m| m.log()).collect();
        panic!("{}\nmembers' logs:\n{}", what(), logs.join("\n----\n"));
    }
}

/// Waits (up to 60 s) until `member` says where it listens.
fn wait_for_addr(member: &mut Member) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(a) = member.addr() {
            return a;
        }
        assert!(
            member.alive() && Instant::now() < deadline,
            "the member never said where it listens:\n{}",
            member.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Asks every one of `addrs` each of `asks` (path, POST body or "" for a
/// GET, the item expected first) until every answer lists that item first,
/// proposed by co-occurrence and answered by the process asked (within 120 s).
fn wait_for_top_items(addrs: &[&str], asks: &[(String, String, &str)], members: &mut [&mut Member]) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut last_miss = None;
        for addr in addrs {
            for (path, body, first) in asks {
                let method = if body.is_empty() { "GET" } else { "POST" };
                let (status, headers, answer) =
                    support::request_with_headers(addr, method, path, "application/json", body);
                let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_default();
                let top = &v["items"][0];
                let by_cooccurrence =
                    top["reasons"].as_array().is_some_and(|r| r.iter().any(|r| r["generator"] == "cooccurrence"));
                let served_by = headers.iter().find(|(n, _)| n == "x-freshet-served-by").map(|(_, v)| v.as_str());
                let first = *first;
                if status == 200 && top["item_id"] == first {
                    assert!(by_cooccurrence, "{path} from {addr}: {first} first, but not by co-occurrence: {answer}");
                    assert_eq!(served_by, Some(*addr), "{path} asked of {addr} was answered elsewhere");
                } else {
                    last_miss = Some(format!("{path} from {addr}: {status} {answer}\nexpected {first} first"));
                }
            }
        }
        let Some(miss) = last_miss else { return };
        for m in members.iter_mut() {
            assert!(m.alive(), "a member exited:\n{}", m.log());
        }
        assert!(Instant::now() < deadline, "recommendations still wrong after 120 s; the last:\n{miss}");
        thread::sleep(Duration::from_millis(500));
    }
}

/// What the oracle says an entity's features hold.
#[derive(Debug, Clone, PartialEq)]
enum Counts {
    /// A user's interactions by event type.
    User(BTreeMap<String, u64>),
    /// An item's views.
    Item(u64),
}

impl Counts {
    /// The same counts read from a feature answer of the API, if it has them.
    fn read(&self, body: &str) -> Option<Counts> {
        let v: serde_json::Value = serde_json::from_str(body).ok()?;
        let features = &v["features"];
        match self {
            Counts::User(_) => {
                let groups = features["user_events"]["groups"].as_array()?;
                let counts = groups
                    .iter()
                    .map(|g| Some((g["key"]["type"].as_str()?.to_owned(), g["current"]["value"].as_u64()?)))
                    .collect::<Option<BTreeMap<_, _>>>()?;
                Some(Counts::User(counts))
            }
            Counts::Item(_) => Some(Counts::Item(features["item_views"]["current"]["value"].as_u64()?)),
        }
    }
}

/// Per user its interactions by type, and per item its views, over the
/// whole input: job (a)'s tumbling windows add up to a user's counts, and
/// each view lies in 12 of job (b)'s hopping windows.
fn totals(expected: &crate::oracle::Expected) -> (BTreeMap<String, BTreeMap<String, u64>>, BTreeMap<String, u64>) {
    let mut users: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    for line in &expected.lines_a {
        let [_, _, user, kind, count] = line.split(',').collect::<Vec<_>>()[..] else { panic!("job (a) line {line}") };
        *users.entry(user.to_owned()).or_default().entry(kind.to_owned()).or_default() += count.parse::<u64>().unwrap();
    }
    let mut items: BTreeMap<String, u64> = BTreeMap::new();
    for line in &expected.lines_b {
        let [_, _, item, count] = line.split(',').collect::<Vec<_>>()[..] else { panic!("job (b) line {line}") };
        *items.entry(item.to_owned()).or_default() += count.parse::<u64>().unwrap();
    }
    for (item, in_windows) in items.iter_mut() {
        assert_eq!(*in_windows % 12, 0, "item {item}'s views are not each in 12 windows");
        *in_windows /= 12;
    }
    (users, items)
}

/// Asks every one of `addrs` for every read until each answer has the
/// expected counts (within 120 s); returns, per read, which process served
/// it when asked of each address.
fn wait_for_reads(
    addrs: &[&str],
    reads: &[(String, Counts)],
    members: &mut [&mut Member],
) -> Vec<(String, Vec<String>)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut served: Vec<Vec<Option<String>>> = vec![vec![None; addrs.len()]; reads.len()];
    loop {
        let mut last_miss = None;
        for ((path, want), by) in reads.iter().zip(served.iter_mut()) {
            for (addr, by) in addrs.iter().zip(by.iter_mut()).filter(|(_, by)| by.is_none()) {
                let (status, headers, body) = support::request_with_headers(addr, "GET", path, "text/plain", "");
                let server = headers.iter().find(|(n, _)| n == "x-freshet-served-by").map(|(_, v)| v.clone());
                if status == 200 && want.read(&body).as_ref() == Some(want) {
                    *by = Some(server.unwrap_or_else(|| panic!("{path} from {addr}: no x-freshet-served-by")));
                } else {
                    last_miss = Some(format!("{path} from {addr}: {status} {body}\nexpected {want:?}"));
                }
            }
        }
        let Some(miss) = last_miss else {
            return reads
                .iter()
                .zip(served)
                .map(|((path, _), by)| (path.clone(), by.into_iter().map(Option::unwrap).collect()))
                .collect();
        };
        for m in members.iter_mut() {
            assert!(m.alive(), "a member exited:\n{}", m.log());
        }
        assert!(Instant::now() < deadline, "reads still wrong after 120 s; the last:\n{miss}");
        thread::sleep(Duration::from_millis(500));
    }
}
