//! `freshet kafka`: create a topic, produce an NDJSON file into it, consume
//! a topic to its end. The test broker here (tansu) is not usable with
//! Debian's kcat, so the tests, the benchmarks and users preparing a
//! backfill use these, on the same librdkafka as the pipeline.

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use freshet_io::kafka::admin::{TopicSpec, ensure_topic, wait_for_partitions};
use freshet_io::kafka::{Connection, Logged};
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::cli::KafkaCommand;

/// Runs a `freshet kafka` subcommand.
pub fn run(command: KafkaCommand) -> Result<()> {
    match command {
        KafkaCommand::CreateTopic { brokers, topic, partitions, compacted } => {
            let connection = Connection { brokers, properties: Vec::new() };
            ensure_topic(&connection, &TopicSpec { name: topic, partitions, replication: 1, compacted })?;
            Ok(())
        }
        KafkaCommand::Produce { brokers, topic, key_field, rate, file } => {
            produce(&brokers, &topic, key_field, rate, &file)
        }
        KafkaCommand::Consume { brokers, topic, values, dedup_by_key, count, pipe_to } => {
            consume(&brokers, &topic, (values, dedup_by_key, count), pipe_to.as_deref())
        }
        KafkaCommand::Latency { brokers, input, output, id_field, key_field, rate, warmup_s, file } => {
            let warmup = (rate * warmup_s) as u64;
            latency(&brokers, (&input, &output), (&id_field, &key_field), (rate, warmup), &file)
        }
    }
}

/// A librdkafka property and its value.
type Setting<'a> = (&'a str, &'a str);

/// What every producer of these tools sets: as the pipeline's sinks do.
const PRODUCER: [Setting; 2] = [("enable.idempotence", "true"), ("partitioner", "murmur2_random")];
/// What every consumer of these tools sets: they commit nothing.
const CONSUMER: [Setting; 1] = [("enable.auto.commit", "false")];

/// A client of `brokers` with the `common` settings then `settings`, logging as `component`.
fn client<T>(brokers: &str, (common, settings): (&[Setting], &[Setting]), component: String) -> Result<T>
where
    T: FromClientConfigAndContext<Logged>,
{
    let all: Vec<(&str, &str)> = common.iter().chain(settings).copied().collect();
    let connection = Connection { brokers: brokers.to_owned(), properties: Vec::new() };
    connection
        .client_config(&all)
        .create_with_context(Logged { component: component.clone() })
        .with_context(|| format!("creating the {component}"))
}

fn produce(brokers: &str, topic: &str, key_field: Option<String>, rate: f64, file: &std::path::Path) -> Result<()> {
    let settings = [("linger.ms", "10"), ("message.timeout.ms", "0")];
    let producer: BaseProducer<Logged> = client(brokers, (&PRODUCER, &settings), format!("producer {topic}"))?;
    wait_for_partitions(producer.client(), topic, "producer", &|| false, &std::thread::sleep)?;
    let input: Box<dyn BufRead> = if file.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
        ))
    };
    let started = Instant::now();
    let mut sent = 0u64;
    for line in input.split(b'\n') {
        let line = line.context("reading the input")?;
        if line.is_empty() {
            continue;
        }
        let key = key_field.as_deref().and_then(|f| key_of(&line, f));
        let mut record = BaseRecord::to(topic).payload(&line[..]);
        if let Some(k) = &key {
            record = record.key(k.as_bytes());
        }
        send(&producer, record)?;
        sent += 1;
        if rate > 0.0 {
            let due = Duration::from_secs_f64(sent as f64 / rate);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                producer.poll(wait);
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(120)).with_context(|| format!("flushing to {topic}"))?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!("{{\"produced\":{sent},\"seconds\":{secs:.3},\"per_s\":{:.0}}}", sent as f64 / secs.max(1e-9));
    Ok(())
}

/// Sends `record`, waiting while the producer's queue is full.
fn send(producer: &BaseProducer<Logged>, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, r)) => bail!("producing to {}: {e}", r.topic),
        }
    }
}

/// The value of the top-level string or number `field` of a JSON line.
fn key_of(line: &[u8], field: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    match v.get(field)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn consume(
    brokers: &str,
    topic: &str,
    (values, dedup, count): (bool, bool, bool),
    pipe_to: Option<&str>,
) -> Result<()> {
    let settings = [("group.id", "freshet-cli"), ("enable.partition.eof", "true")];
    let consumer: BaseConsumer<Logged> = client(brokers, (&CONSUMER, &settings), format!("consumer {topic}"))?;
    let pipe = match pipe_to {
        Some(to) => {
            // As the pipeline's sinks produce: linger 1 ms, a bounded queue.
            let settings = [("linger.ms", "1"), ("queue.buffering.max.messages", "10000"), ("message.timeout.ms", "0")];
            let producer: BaseProducer<Logged> = client(brokers, (&PRODUCER, &settings), format!("producer {to}"))?;
            wait_for_partitions(producer.client(), to, "producer", &|| false, &std::thread::sleep)?;
            Some((producer, to))
        }
        None => None,
    };
    let partitions = wait_for_partitions(consumer.client(), topic, "consumer", &|| false, &std::thread::sleep)?;
    let mut assignment = TopicPartitionList::new();
    let mut open = 0usize;
    let mut ends = HashMap::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(10))?;
        if high > low {
            assignment.add_partition_offset(topic, *p, Offset::Beginning)?;
            ends.insert(*p, high);
            open += 1;
        }
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut last: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    let mut order: Vec<Vec<u8>> = Vec::new();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut idle_since = Instant::now();
    while open > 0 {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                idle_since = Instant::now();
                let (key, value) = (m.key().unwrap_or_default(), m.payload().unwrap_or_default());
                records += 1;
                bytes += value.len() as u64;
                if let Some((producer, to)) = &pipe {
                    let mut record = BaseRecord::to(to).payload(value);
                    if let Some(k) = m.key() {
                        record = record.key(k);
                    }
                    send(producer, record)?;
                    producer.poll(Duration::ZERO);
                }
                if dedup {
                    if last.insert(key.to_vec(), value.to_vec()).is_none() {
                        order.push(key.to_vec());
                    }
                } else if !count {
                    if !values {
                        out.write_all(key)?;
                        out.write_all(b"\t")?;
                    }
                    out.write_all(value)?;
                    out.write_all(b"\n")?;
                }
                if ends.get(&m.partition()).is_some_and(|end| m.offset() + 1 >= *end) {
                    ends.remove(&m.partition());
                    open -= 1;
                }
            }
            Some(Err(KafkaError::PartitionEOF(p))) if ends.remove(&p).is_some() => open -= 1,
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => eprintln!("consume error: {e}"),
            None if idle_since.elapsed() > Duration::from_secs(60) => bail!("no records from {topic} for 60 s"),
            None => {}
        }
    }
    if let Some((producer, to)) = &pipe {
        producer.flush(Duration::from_secs(120)).with_context(|| format!("flushing to {to}"))?;
    }
    let secs = started.elapsed().as_secs_f64();
    if dedup && !count {
        for key in &order {
            if !values {
                out.write_all(key)?;
                out.write_all(b"\t")?;
            }
            out.write_all(&last[key])?;
            out.write_all(b"\n")?;
        }
    }
    if count {
        writeln!(
            out,
            "{{\"records\":{records},\"bytes\":{bytes},\"seconds\":{secs:.3},\"per_s\":{:.0}}}",
            records as f64 / secs.max(1e-9)
        )?;
    }
    out.flush()?;
    let _ = consumer.unassign();
    Ok(())
}

fn latency(
    brokers: &str,
    (input, output): (&str, &str),
    (id_field, key_field): (&str, &str),
    (rate, warmup): (f64, u64),
    file: &std::path::Path,
) -> Result<()> {
    let settings = [("group.id", "freshet-latency"), ("fetch.wait.max.ms", "5")];
    let consumer: BaseConsumer<Logged> = client(brokers, (&CONSUMER, &settings), format!("consumer {output}"))?;
    let mut assignment = TopicPartitionList::new();
    for p in wait_for_partitions(consumer.client(), output, "consumer", &|| false, &std::thread::sleep)? {
        let (_, high) = consumer.fetch_watermarks(output, p, Duration::from_secs(10))?;
        assignment.add_partition_offset(output, p, Offset::Offset(high))?;
    }
    consumer.assign(&assignment)?;
    let lines: Vec<Vec<u8>> = std::fs::read(file)
        .with_context(|| format!("reading {}", file.display()))?
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    // Send instant and sequence number of each event in flight.
    let sent: std::sync::Arc<std::sync::Mutex<HashMap<String, (Instant, u64)>>> = Default::default();
    let producer_done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let producing = {
        let (sent, done, brokers) = (sent.clone(), producer_done.clone(), brokers.to_owned());
        let (input, id_field, key_field) = (input.to_owned(), id_field.to_owned(), key_field.to_owned());
        std::thread::spawn(move || -> Result<u64> {
            let settings = [("linger.ms", "1")];
            let producer: BaseProducer<Logged> = client(&brokers, (&PRODUCER, &settings), format!("producer {input}"))?;
            let started = Instant::now();
            let mut n = 0u64;
            for line in &lines {
                let Some(id) = key_of(line, &id_field) else { continue };
                let key = key_of(line, &key_field).unwrap_or_default();
                let due = started + Duration::from_secs_f64(n as f64 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                sent.lock().unwrap_or_else(|p| p.into_inner()).insert(id, (Instant::now(), n));
                let mut record = BaseRecord::to(&input).payload(&line[..]).key(key.as_bytes());
                while let Err((e, back)) = producer.send(record) {
                    if !matches!(e, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) {
                        bail!("producing to {input}: {e}");
                    }
                    record = back;
                    producer.poll(Duration::from_millis(1));
                }
                producer.poll(Duration::ZERO);
                n += 1;
            }
            producer.flush(Duration::from_secs(60))?;
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(n)
        })
    };
    let mut latencies_us: Vec<u64> = Vec::new();
    let mut last_record = Instant::now();
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let now = Instant::now();
                last_record = now;
                let Some(id) = m.payload().and_then(|v| key_of(v, id_field)) else { continue };
                if let Some((at, n)) = sent.lock().unwrap_or_else(|p| p.into_inner()).remove(&id)
                    && n >= warmup
                {
                    latencies_us.push(now.duration_since(at).as_micros() as u64);
                }
            }
            Some(Err(e)) => eprintln!("consume error: {e}"),
            None => {}
        }
        let done = producer_done.load(std::sync::atomic::Ordering::SeqCst);
        if done
            && (sent.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
                || last_record.elapsed() > Duration::from_secs(10))
        {
            break;
        }
    }
    let produced = producing.join().map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    let _ = consumer.unassign();
    latencies_us.sort_unstable();
    let at = |q: f64| {
        latencies_us.get(((latencies_us.len() as f64 - 1.0) * q).round() as usize).map_or(0.0, |us| *us as f64 / 1000.0)
    };
    println!(
        "{{\"produced\":{produced},\"matched\":{},\"rate\":{rate},\"p50_ms\":{:.2},\"p90_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2}}}",
        latencies_us.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
    Ok(())
}
