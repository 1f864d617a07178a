//! Each input format on a few lines written to a temporary directory, the
//! canonical order and numbering, and the errors on malformed input.

use std::io::Write;

use super::*;

struct Files(tempfile::TempDir);

impl Files {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.0.path().join(name);
        if name.ends_with(".gz") {
            let mut gz = flate2::write::GzEncoder::new(File::create(&path).unwrap(), flate2::Compression::fast());
            gz.write_all(bytes).unwrap();
            gz.finish().unwrap();
        } else {
            std::fs::write(&path, bytes).unwrap();
        }
        path
    }
}

fn options(format: Format) -> LoadOptions {
    LoadOptions { format, columns: CsvColumns::default(), min_rating: None }
}

/// (user id, item id, timestamp) by position.
fn events(stream: &Stream) -> Vec<(String, String, f64)> {
    (0..stream.len())
        .map(|p| {
            (
                stream.user_names[stream.users[p] as usize].clone(),
                stream.item_names[stream.items[p] as usize].clone(),
                stream.timestamps[p],
            )
        })
        .collect()
}

fn ev(u: &str, i: &str, t: f64) -> (String, String, f64) {
    (u.to_owned(), i.to_owned(), t)
}

fn load_err(paths: &[PathBuf], options: &LoadOptions) -> String {
    format!("{:#}", load(paths, options).unwrap_err())
}

#[test]
fn ml_csv_sorts_by_time_then_input_order_and_numbers_by_first_appearance() {
    let f = Files::new();
    let path = f.write("r.csv", b"userId,movieId,rating,timestamp\n7,50,4.0,20\n8,60,3.5,10\n7,60,1.0,10\n9,50,5,20\n");
    let s = load(&[path], &options(Format::MlCsv)).unwrap();
    assert_eq!(events(&s), vec![ev("8", "60", 10.0), ev("7", "60", 10.0), ev("7", "50", 20.0), ev("9", "50", 20.0)]);
    assert_eq!(s.user_names, ["8", "7", "9"]);
    assert_eq!(s.item_names, ["60", "50"]);
    assert_eq!(s.users, [0, 1, 1, 2]);
    assert_eq!(s.items, [0, 0, 1, 1]);
}

#[test]
fn ml_udata_is_tab_separated_without_header() {
    let f = Files::new();
    let path = f.write("u.data", b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n\n22\t377\t1\t878887116\n");
    let s = load(&[path], &options(Format::MlUdata)).unwrap();
    assert_eq!(
        events(&s),
        vec![ev("22", "377", 878887116.0), ev("196", "242", 881250949.0), ev("186", "302", 891717742.0)]
    );
}

#[test]
fn ml_dat_splits_on_double_colons_with_universal_newlines() {
    let f = Files::new();
    // \r\n, a lone \r and a final line without terminator all end lines;
    // a blank line is skipped.
    let path = f.write("ratings.dat", b"1::1193::5::978300760\r\n1::661::3::978302109\r\r\n2::3408::4::978300275");
    let s = load(&[path], &options(Format::MlDat)).unwrap();
    assert_eq!(
        events(&s),
        vec![ev("2", "3408", 978300275.0), ev("1", "1193", 978300760.0), ev("1", "661", 978302109.0)]
    );
}

#[test]
fn sessionrec_files_are_read_in_the_order_given() {
    let f = Files::new();
    let a =
        f.write("train.txt", b"SessionId\tItemId\tTime\n3\t214716935\t1396437466.94\n3\t214832672\t1396438212.318\n");
    let b = f.write("test.txt", b"SessionId\tItemId\tTime\n1\t214716935\t1396437466.94\n");
    let s = load(&[a.clone(), b.clone()], &options(Format::SessionRec)).unwrap();
    // Equal timestamps keep input order across files: train's row first.
    assert_eq!(
        events(&s),
        vec![
            ev("3", "214716935", 1396437466.94),
            ev("1", "214716935", 1396437466.94),
            ev("3", "214832672", 1396438212.318)
        ]
    );
    let s = load(&[b, a], &options(Format::SessionRec)).unwrap();
    assert_eq!(s.user_names, ["1", "3"]);
}

#[test]
fn csv_with_custom_separator_and_columns_quotes_and_strips_ids() {
    let f = Files::new();
    let path =
        f.write("log.csv", b" ts ;who;what;stars\n5;\" alice \";\"a;b\";2\n3;bob;\"say \"\"hi\"\"\";5\n \n4;bob;x;4\n");
    let mut o = options(Format::Csv);
    o.columns = CsvColumns {
        sep: Some(";".into()),
        user: Some("who".into()),
        item: Some("what".into()),
        time: Some("ts".into()),
        rating: Some("stars".into()),
    };
    let s = load(std::slice::from_ref(&path), &o).unwrap();
    assert_eq!(events(&s), vec![ev("bob", "say \"hi\"", 3.0), ev("bob", "x", 4.0), ev("alice", "a;b", 5.0)]);
    o.min_rating = Some(4.0);
    let s = load(&[path], &o).unwrap();
    assert_eq!(events(&s), vec![ev("bob", "say \"hi\"", 3.0), ev("bob", "x", 4.0)]);
}

#[test]
fn csv_defaults_are_user_item_timestamp_and_tab_may_be_spelled_out() {
    let f = Files::new();
    let path = f.write("log.tsv", b"item\tuser\ttimestamp\nx\tu\t1_000\n");
    let mut o = options(Format::Csv);
    o.columns.sep = Some("\\t".into());
    let s = load(&[path], &o).unwrap();
    assert_eq!(events(&s), vec![ev("u", "x", 1000.0)]);
}

#[test]
fn gz_input_is_decompressed() {
    let f = Files::new();
    let path = f.write("ratings.csv.gz", b"userId,movieId,rating,timestamp\n1,2,3.0,4\n");
    let s = load(&[path], &options(Format::MlCsv)).unwrap();
    assert_eq!(events(&s), vec![ev("1", "2", 4.0)]);
}

#[test]
fn min_rating_drops_rows_before_indexing() {
    let f = Files::new();
    let path = f.write("u.data", b"1\t10\t2\t5\n2\t20\t4\t6\n1\t30\t4.5\t7\n");
    let mut o = options(Format::MlUdata);
    o.min_rating = Some(4.0);
    let s = load(&[path], &o).unwrap();
    assert_eq!(events(&s), vec![ev("2", "20", 6.0), ev("1", "30", 7.0)]);
    assert_eq!(s.user_names, ["2", "1"]);
}

#[test]
fn malformed_rows_name_file_line_and_column() {
    let f = Files::new();
    let path = f.write("r.csv", b"userId,movieId,rating,timestamp\n1,2,3,4\n1,2,3,soon\n");
    let e = load_err(std::slice::from_ref(&path), &options(Format::MlCsv));
    assert!(e.contains("r.csv") && e.contains("line 3") && e.contains("column 4 (timestamp)"), "{e}");
    assert!(e.contains("\"soon\""), "{e}");

    let path = f.write("short.data", b"1\t2\t3\t4\n1\t2\n");
    let e = load_err(&[path], &options(Format::MlUdata));
    assert!(e.contains("short.data") && e.contains("line 2") && e.contains("no column 4 (timestamp)"), "{e}");

    let path = f.write("nan.dat", b"1::2::3::nan\n");
    let e = load_err(&[path], &options(Format::MlDat));
    assert!(e.contains("line 1") && e.contains("NaN"), "{e}");

    let path = f.write("rating.data", b"1\t2\tgood\t4\n");
    let mut o = options(Format::MlUdata);
    o.min_rating = Some(3.0);
    let e = load_err(&[path], &o);
    assert!(e.contains("column 3 (rating)"), "{e}");
}

#[test]
fn missing_columns_and_files_are_errors() {
    let f = Files::new();
    let path = f.write("s.txt", b"SessionId\tItem\tTime\n1\t2\t3\n");
    let e = load_err(&[path], &options(Format::SessionRec));
    assert!(e.contains("s.txt") && e.contains("no item column \"ItemId\""), "{e}");

    let path = f.write("empty.csv", b"");
    let e = load_err(&[path], &options(Format::MlCsv));
    assert!(e.contains("empty.csv") && e.contains("no header"), "{e}");

    let e = load_err(&[f.0.path().join("absent.csv")], &options(Format::MlCsv));
    assert!(e.contains("absent.csv"), "{e}");
}

#[test]
fn options_that_do_not_fit_the_format_are_refused() {
    let mut o = options(Format::MlCsv);
    o.columns.sep = Some(";".into());
    assert!(load_err(&[], &o).contains("--sep"));
    let mut o = options(Format::SessionRec);
    o.min_rating = Some(1.0);
    assert!(load_err(&[], &o).contains("--min-rating"));
    let mut o = options(Format::Csv);
    o.columns.sep = Some(";;".into());
    assert!(load_err(&[], &o).contains("--sep"));
    assert!(Format::parse("parquet").is_err());
}

#[test]
fn a_byte_order_mark_does_not_hide_the_first_header_name() {
    let f = Files::new();
    let path = f.write("bom.csv", "\u{feff}userId,movieId,rating,timestamp\n1,2,3,4\n".as_bytes());
    let s = load(&[path], &options(Format::MlCsv)).unwrap();
    assert_eq!(events(&s), vec![ev("1", "2", 4.0)]);
}

#[test]
fn the_time_unit_is_the_one_that_makes_the_largest_timestamp_an_epoch_time() {
    let with_times = |times: &[f64]| Stream { timestamps: times.to_vec(), ..Stream::default() };
    // MovieLens and YOOCHOOSE: epoch seconds.
    assert_eq!(with_times(&[8.8e8, 1.4e9]).ms_per_unit(TimeUnit::Auto), (1000.0, "s"));
    // RetailRocket-style epoch milliseconds, and microseconds.
    assert_eq!(with_times(&[1.43e12, 1.44e12]).ms_per_unit(TimeUnit::Auto), (1.0, "ms"));
    assert_eq!(with_times(&[1.7e15]).ms_per_unit(TimeUnit::Auto), (0.001, "us"));
    // Relative times count as seconds; a unit given is taken as given.
    assert_eq!(with_times(&[0.0, 3600.0]).ms_per_unit(TimeUnit::Auto), (1000.0, "s"));
    assert_eq!(with_times(&[1.43e12]).ms_per_unit(TimeUnit::S), (1000.0, "s"));
    assert_eq!(with_times(&[8.8e8]).ms_per_unit(TimeUnit::Ms), (1.0, "ms"));
    assert_eq!(Stream::default().ms_per_unit(TimeUnit::Auto), (1000.0, "s"));
}
