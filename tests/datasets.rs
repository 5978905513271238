//! Data files: JSON lines, CSV/TSV, the CBLUE array; named errors for broken records; skipping;
//! HTML entities; label maps; the stratified split.

use std::path::PathBuf;

use emrclass::data::dataset::{read, stratified_split, Example, LabelMap, ReadOptions};

fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let d = std::env::temp_dir().join(format!("emrclass-data-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn ex(text: &str, label: &str) -> Example {
    Example {
        text: text.into(),
        label: label.into(),
    }
}

#[test]
fn the_three_formats() {
    let o = ReadOptions::default();
    let j = file("a.jsonl", "{\"text\": \"胸痛 &amp; 气短\", \"label\": \"Disease\"}\n\n{\"text\": \"年龄&gt;18岁\", \"label\": 3}\n".as_bytes());
    assert_eq!(
        read(&j, &o).unwrap().examples,
        vec![ex("胸痛 & 气短", "Disease"), ex("年龄>18岁", "3")]
    );
    let c = file(
        "a.csv",
        "id,sentence,category\n1,\"血压高, 心率快\",Sign\n2,无,Other\n".as_bytes(),
    );
    let co = ReadOptions {
        text_field: "sentence".into(),
        label_field: "category".into(),
        ..ReadOptions::default()
    };
    assert_eq!(
        read(&c, &co).unwrap().examples,
        vec![ex("血压高, 心率快", "Sign"), ex("无", "Other")]
    );
    let t = file("a.tsv", "label\ttext\nAge\t年龄18-65岁\n".as_bytes());
    assert_eq!(
        read(&t, &o).unwrap().examples,
        vec![ex("年龄18-65岁", "Age")]
    );
    let b = file("chip.json", r#"[{"id": "s1", "label": "Age", "text": "年龄≥18岁"}, {"id": "s2", "label": "Disease", "text": "糖尿病"}]"#.as_bytes());
    assert_eq!(
        read(&b, &o).unwrap().examples,
        vec![ex("年龄≥18岁", "Age"), ex("糖尿病", "Disease")]
    );
}

#[test]
fn broken_records_name_file_and_line_or_are_skipped() {
    let o = ReadOptions::default();
    let mut bytes =
        b"{\"text\": \"ok\", \"label\": \"A\"}\n{\"text\": \"\", \"label\": \"A\"}\n".to_vec();
    bytes.extend_from_slice(
        b"{\"text\": \"\xff\xfe\", \"label\": \"B\"}\n{not json\n{\"text\": \"x\"}\n",
    );
    let p = file("broken.jsonl", &bytes);
    let e = read(&p, &o).err().unwrap().to_string();
    assert!(
        e.contains("broken.jsonl:2: empty text") && e.contains("--skip-bad"),
        "{e}"
    );
    let skipping = ReadOptions {
        skip_bad: true,
        ..ReadOptions::default()
    };
    let l = read(&p, &skipping).unwrap();
    assert_eq!(l.examples, vec![ex("ok", "A")]);
    assert_eq!(l.skipped.len(), 4, "{:?}", l.skipped);
    assert!(l.skipped[1].contains("broken.jsonl:3: invalid UTF-8"));
    assert!(l.skipped[2].contains("broken.jsonl:4: not JSON"));
    assert!(l.skipped[3].contains("broken.jsonl:5: needs a \"text\" string and a \"label\" label"));
    let c = file("bad.csv", b"text,label\n\"open quote,A\n");
    assert!(read(&c, &o).is_err());
    let h = file("nohead.csv", b"sentence,label\nx,A\n");
    let e = read(&h, &o).err().unwrap().to_string();
    assert!(e.contains("nohead.csv:1: no column \"text\""), "{e}");
    let arr = file(
        "bad.json",
        b"[{\"label\": \"A\", \"text\": \"x\"},\n {\"label\": \"B\"}]",
    );
    let e = read(&arr, &o).err().unwrap().to_string();
    assert!(e.contains("bad.json: record 2"), "{e}");
    let u = file("u.json", b"[{\"label\": \"A\",\n \"text\": \"\xc3\x28\"}]");
    assert!(read(&u, &o)
        .err()
        .unwrap()
        .to_string()
        .contains("u.json:2: invalid UTF-8"));
    let x = file("data.xml", b"<x/>");
    assert!(read(&x, &o)
        .err()
        .unwrap()
        .to_string()
        .contains("unknown format `.xml`"));
}

#[test]
fn label_maps_and_unknown_labels() {
    let train = vec![ex("a", "Sign"), ex("b", "Age"), ex("c", "Sign")];
    let map = LabelMap::from_examples(&train);
    assert_eq!(map.names, vec!["Age", "Sign"]);
    assert_eq!(map.counts(&train), vec![1, 2]);
    assert_eq!(
        map.indices(&train, std::path::Path::new("train.jsonl"))
            .unwrap(),
        vec![1, 0, 1]
    );
    let dev = vec![
        ex("d", "Gout"),
        ex("e", "Age"),
        ex("f", "Asthma"),
        ex("g", "Gout"),
    ];
    let e = map
        .indices(&dev, std::path::Path::new("dev.jsonl"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dev.jsonl: labels not in the training set: Asthma, Gout"),
        "{e}"
    );
}

#[test]
fn stratified_split_keeps_shares_and_is_seeded() {
    let mut all = Vec::new();
    for (label, n) in [("big", 100), ("mid", 20), ("two", 2), ("one", 1)] {
        for i in 0..n {
            all.push(ex(&format!("{label}{i}"), label));
        }
    }
    let (train, dev) = stratified_split(all.clone(), 0.1, 42).unwrap();
    let count = |v: &[Example], l: &str| v.iter().filter(|e| e.label == l).count();
    assert_eq!(
        [
            count(&dev, "big"),
            count(&dev, "mid"),
            count(&dev, "two"),
            count(&dev, "one")
        ],
        [10, 2, 1, 0]
    );
    assert_eq!(train.len() + dev.len(), all.len());
    assert_eq!(
        stratified_split(all.clone(), 0.1, 42).unwrap().1,
        dev,
        "same seed, same split"
    );
    assert_ne!(
        stratified_split(all, 0.1, 43).unwrap().1,
        dev,
        "another seed, another split"
    );
}

/// --long-text: head keeps the body's first tokens, head-tail its first quarter and last three
/// quarters of the room; short records pass unchanged; [CLS] and [SEP] stay.
#[test]
fn long_records_are_cut_at_the_head_or_at_both_ends() {
    use emrclass::data::batching::LongText;
    let ids: Vec<i32> = std::iter::once(2)
        .chain(100..120)
        .chain(std::iter::once(3))
        .collect();
    assert_eq!(
        LongText::Head.cut(ids.clone(), 10),
        vec![2, 100, 101, 102, 103, 104, 105, 106, 107, 3]
    );
    // Room 8: head 2, tail 6.
    assert_eq!(
        LongText::HeadTail.cut(ids.clone(), 10),
        vec![2, 100, 101, 114, 115, 116, 117, 118, 119, 3]
    );
    assert_eq!(LongText::HeadTail.cut(ids.clone(), 30), ids);
    assert_eq!("head-tail".parse::<LongText>().unwrap(), LongText::HeadTail);
    assert!("middle".parse::<LongText>().is_err());
}

/// --long-text chunks: a long record becomes windows of max_len tokens, each [CLS] + a run of
/// consecutive body tokens + [SEP], the first at the body's start, the last at its end, each
/// overlapping the next by at least a quarter of the room; over --max-chunks, that many spread
/// evenly (gaps allowed); a short record stays one window.
#[test]
fn long_records_become_overlapping_windows() {
    use emrclass::data::batching::LongText;
    let record = |n: i32| -> Vec<i32> {
        std::iter::once(2)
            .chain(100..100 + n)
            .chain(std::iter::once(3))
            .collect()
    };
    let chunks = |max| LongText::Chunks { max };
    // Room 8 (max_len 10), stride 6: 20 body tokens need 1 + ceil(12 / 6) = 3 windows,
    // starting at 0, 6 and 12.
    let w = chunks(8).windows(record(20), 10);
    assert_eq!(
        w,
        vec![
            vec![2, 100, 101, 102, 103, 104, 105, 106, 107, 3],
            vec![2, 106, 107, 108, 109, 110, 111, 112, 113, 3],
            vec![2, 112, 113, 114, 115, 116, 117, 118, 119, 3],
        ]
    );
    // Every awkward length: every body token is read, windows are max_len long, runs of
    // consecutive tokens, the overlap at least a quarter of the room.
    for max_len in [3, 4, 7, 10, 33] {
        let room = max_len - 2;
        for n in 0..90 {
            let ids = record(n);
            let w = chunks(1000).windows(ids.clone(), max_len);
            if ids.len() <= max_len {
                assert_eq!(w, vec![ids.clone()], "max_len {max_len}, {n} tokens");
                continue;
            }
            let mut seen = vec![false; n as usize];
            let mut last_start = None::<usize>;
            for win in &w {
                assert_eq!(win.len(), max_len);
                assert_eq!((win[0], win[max_len - 1]), (2, 3));
                let start = (win[1] - 100) as usize;
                for (k, &t) in win[1..max_len - 1].iter().enumerate() {
                    assert_eq!(t as usize, 100 + start + k, "consecutive tokens");
                    seen[start + k] = true;
                }
                if let Some(prev) = last_start {
                    assert!(start > prev, "windows move forward");
                    assert!(
                        prev + room - start >= room / 4,
                        "overlap of a quarter window"
                    );
                }
                last_start = Some(start);
            }
            assert!(
                seen.iter().all(|&s| s),
                "max_len {max_len}, {n} tokens: all read"
            );
        }
    }
    // The cap: 2 windows of 20 tokens -> the head and the tail; 1 window -> the head cut.
    assert_eq!(
        chunks(2).windows(record(20), 10),
        vec![
            vec![2, 100, 101, 102, 103, 104, 105, 106, 107, 3],
            vec![2, 112, 113, 114, 115, 116, 117, 118, 119, 3],
        ]
    );
    assert_eq!(
        chunks(1).windows(record(20), 10),
        vec![LongText::Head.cut(record(20), 10)]
    );
    // 3 of 5 needed windows over 40 tokens: starts 0, 16, 32 (evenly spread).
    let starts: Vec<i32> = chunks(3)
        .windows(record(40), 10)
        .iter()
        .map(|w| w[1] - 100)
        .collect();
    assert_eq!(starts, vec![0, 16, 32]);
    // Head and head-tail are one window: the cut.
    assert_eq!(
        LongText::HeadTail.windows(record(20), 10),
        vec![LongText::HeadTail.cut(record(20), 10)]
    );
    assert_eq!(
        "chunks".parse::<LongText>().unwrap(),
        LongText::Chunks {
            max: emrclass::data::batching::DEFAULT_MAX_CHUNKS
        }
    );
    assert_eq!(chunks(3).name(), "chunks");
    assert_eq!(
        (chunks(3).max_windows(), LongText::Head.max_windows()),
        (3, 1)
    );
}

/// The long-record set: 30 classes, 2 to 600 records each, hundreds of characters, the subtype
/// named only in the closing summary (so a head cut of 64 characters cannot see it).
#[test]
fn the_long_synthetic_set_hides_the_subtype_at_the_end() {
    use emrclass::data::synthetic::{generate_long, long_class_names};
    let all = generate_long(7, 1.0);
    assert_eq!(all, generate_long(7, 1.0), "deterministic");
    let names = long_class_names();
    assert_eq!(names.len(), 30);
    let counts: Vec<usize> = names
        .iter()
        .map(|n| all.iter().filter(|e| &e.label == n).count())
        .collect();
    assert_eq!(counts.iter().max(), Some(&600));
    assert!(
        *counts.iter().min().unwrap() >= 2 && *counts.iter().min().unwrap() < 10,
        "{counts:?}"
    );
    let mean_chars = all.iter().map(|e| e.text.chars().count()).sum::<usize>() / all.len();
    assert!(
        (200..800).contains(&mean_chars),
        "{mean_chars} characters on average"
    );
    for e in &all {
        let head: String = e.text.chars().take(64).collect();
        let subtype_words = [
            "首次发现",
            "初次就诊",
            "新发病例",
            "病情复发",
            "再次入院",
            "既往已确诊",
        ];
        assert!(
            !subtype_words.iter().any(|w| head.contains(w)),
            "{}",
            e.text
        );
        let tail: String = e
            .text
            .chars()
            .rev()
            .take(24)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        assert!(subtype_words.iter().any(|w| tail.contains(w)), "{}", e.text);
    }
}
