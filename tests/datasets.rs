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
