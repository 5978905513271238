//! Metrics against scikit-learn 1.7.2 (tests/fixtures/make_metrics_fixtures.py): accuracy,
//! per-class and macro / micro / weighted precision, recall and F1, confusion matrices.

use emrclass::train::metrics::{report, Confusion};
use serde_json::Value;

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn metrics_match_scikit_learn() {
    let v: Value = serde_json::from_str(include_str!("fixtures/metrics.json")).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let k = case["classes"].as_u64().unwrap() as usize;
        let us = |key: &str| -> Vec<usize> {
            case[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as usize)
                .collect()
        };
        let c = Confusion::from_pairs(k, &us("truth"), &us("pred")).unwrap();
        let want_conf: Vec<u64> = us("confusion").into_iter().map(|x| x as u64).collect();
        assert_eq!(c.counts, want_conf, "{name}: confusion");
        let r = report(&c);
        assert!(
            close(r.accuracy, case["accuracy"].as_f64().unwrap()),
            "{name}: accuracy"
        );
        for (key, avg) in [
            ("macro", &r.macro_avg),
            ("micro", &r.micro_avg),
            ("weighted", &r.weighted_avg),
        ] {
            let want: Vec<f64> = case[key]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert!(
                close(avg.precision, want[0])
                    && close(avg.recall, want[1])
                    && close(avg.f1, want[2]),
                "{name}: {key} {avg:?} vs {want:?}"
            );
        }
        for (i, (got, want)) in r
            .per_class
            .iter()
            .zip(case["per_class"].as_array().unwrap())
            .enumerate()
        {
            let w: Vec<f64> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            assert!(
                close(got.precision, w[0]) && close(got.recall, w[1]) && close(got.f1, w[2]),
                "{name}: class {i}"
            );
            assert_eq!(got.support, w[3] as u64, "{name}: support {i}");
        }
    }
}

#[test]
fn confusion_csv_and_bad_pairs() {
    let names: Vec<String> = ["a", "b,c"].iter().map(|s| s.to_string()).collect();
    let c = Confusion::from_pairs(2, &[0, 1, 1], &[0, 0, 1]).unwrap();
    assert_eq!(
        c.to_csv(&names),
        "true\\predicted,a,\"b,c\"\na,1,0\n\"b,c\",1,1\n"
    );
    assert!(Confusion::from_pairs(2, &[0, 2], &[0, 1])
        .unwrap_err()
        .to_string()
        .contains("outside 0..2"));
    assert!(Confusion::from_pairs(2, &[0], &[0, 1]).is_err());
}

/// The per-class table lines up whatever the names: Chinese names take two columns a
/// character, long names widen the class column.
#[test]
fn report_table_aligns_wide_and_long_names() {
    use emrclass::train::metrics::{display_width, report, report_table, Confusion};
    let mut c = Confusion::new(3);
    for (t, p) in [(0, 0), (1, 1), (2, 2), (2, 1), (0, 2)] {
        c.add(t, p).unwrap();
    }
    let names = vec![
        "糖尿病".to_string(),
        "Enrollment in other studies".to_string(),
        "B".to_string(),
    ];
    let table = report_table(&report(&c), &names);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 1 + 3 + 3 + 1);
    // Every per-class line and the header end at the same display column.
    let widths: Vec<usize> = lines[..4].iter().map(|l| display_width(l)).collect();
    assert!(
        widths.iter().all(|&w| w == widths[0]),
        "{widths:?}\n{table}"
    );
    assert_eq!(display_width("糖尿病"), 6);
    assert_eq!(display_width("abc"), 3);
}
