//! Class weights and class similarity: the formulas, the file formats, and the errors that
//! name the file, the line and the unknown classes.

use std::path::PathBuf;

use emrclass::model::imbalance::*;

fn classes() -> Vec<String> {
    ["肺癌", "Lung cancer", "diabetes", "hypertension"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

fn file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("emrclass-imbalance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn class_weights_follow_proportions_and_average_to_one() {
    let counts = [100usize, 10, 1, 0];
    for gamma in [0.0, 0.5, 1.0] {
        let w = class_weights_from_counts(&counts, gamma).unwrap();
        let n: usize = counts.iter().sum();
        let mean: f64 = counts
            .iter()
            .zip(&w)
            .map(|(&c, w)| c as f64 / n as f64 * w)
            .sum();
        assert!((mean - 1.0).abs() < 1e-12, "gamma {gamma}: {w:?}");
        // Ratios are the counts' inverse ratios to the power gamma; the absent class takes the top.
        assert!((w[1] / w[0] - 10f64.powf(gamma)).abs() < 1e-9);
        assert!((w[2] / w[1] - 10f64.powf(gamma)).abs() < 1e-9);
        assert_eq!(w[3], w[2]);
    }
    assert!(class_weights_from_counts(&[0, 0], 1.0).is_err());
}

#[test]
fn class_weights_from_files() {
    let w = read_class_weights(
        &file(
            "w.csv",
            "肺癌,1.5\nLung cancer, 2\n\ndiabetes,0.5\nhypertension,1\n",
        ),
        &classes(),
    )
    .unwrap();
    assert_eq!(w, vec![1.5, 2.0, 0.5, 1.0]);
    let w = read_class_weights(
        &file(
            "w.json",
            r#"{"diabetes": 3, "肺癌": 1, "Lung cancer": 1, "hypertension": 2}"#,
        ),
        &classes(),
    )
    .unwrap();
    assert_eq!(w, vec![1.0, 1.0, 3.0, 2.0]);
    let e = read_class_weights(&file("bad.csv", "肺癌,1\nLung cancer,x\n"), &classes())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.csv:2") && e.contains("`x` is not a number"),
        "{e}"
    );
    let e = read_class_weights(&file("missing.csv", "肺癌,1\n"), &classes())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("no weight for Lung cancer, diabetes, hypertension"),
        "{e}"
    );
    let e = read_class_weights(
        &file("unknown.csv", "肺癌,1\nasthma,2\ngout,1\n"),
        &classes(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("not among the 4 classes: asthma, gout"), "{e}");
    let e = read_class_weights(&file("neg.csv", "肺癌,-1\n"), &classes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("neg.csv:1") && e.contains("positive"), "{e}");
}

#[test]
fn similarity_matrix_from_csv_and_json_in_any_order() {
    let csv = ",diabetes,肺癌,Lung cancer,hypertension\n\
               diabetes,1,0.1,0.2,0.6\n\
               肺癌,0.1,1,0.9,0\n\
               Lung cancer,0.2,0.9,1,0\n\
               hypertension,0.6,0,0,1\n";
    let s = read_similarity_matrix(&file("s.csv", csv), &classes()).unwrap();
    assert_eq!(s[1], 0.9); // 肺癌 -> Lung cancer
    assert_eq!(s[2 * 4 + 3], 0.6); // diabetes -> hypertension
    assert_eq!(s[3 * 4 + 1], 0.0);
    let json = r#"{"classes": ["hypertension", "diabetes", "Lung cancer", "肺癌"],
                   "matrix": [[1, 0.6, 0, 0], [0.6, 1, 0.2, 0.1], [0, 0.2, 1, 0.9], [0, 0.1, 0.9, 1]]}"#;
    assert_eq!(
        read_similarity_matrix(&file("s.json", json), &classes()).unwrap(),
        s
    );
    let e = read_similarity_matrix(&file("u.csv", ",flu,肺癌\nflu,1,0\n肺癌,0,1\n"), &classes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("not among the 4 classes: flu"), "{e}");
    let e = read_similarity_matrix(
        &file("small.json", r#"{"classes": ["肺癌"], "matrix": [[1]]}"#),
        &classes(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("4 x 4"), "{e}");
}

#[test]
fn similarity_from_a_knowledge_network_uses_the_best_path() {
    let edges = "肺癌,Lung cancer,0.9\nLung cancer,diabetes,0.5\ndiabetes,肺癌,0.2\n";
    let s = similarity_from_edges(&file("e.csv", edges), &classes()).unwrap();
    let at = |a: usize, b: usize| s[a * 4 + b];
    assert_eq!(at(0, 1), 0.9);
    assert_eq!(at(1, 0), 0.9);
    // 肺癌 -> diabetes: directly 0.2, through Lung cancer 0.9 * 0.5 = 0.45; the better path wins.
    assert!((at(0, 2) - 0.45).abs() < 1e-12);
    assert_eq!(at(3, 0), 0.0); // hypertension is linked to nothing
    assert_eq!(at(2, 2), 1.0);
    let e = similarity_from_edges(&file("e2.csv", "肺癌,asthma,0.5\n"), &classes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("asthma"), "{e}");
    let e = similarity_from_edges(&file("e3.csv", "肺癌,diabetes,1.5\n"), &classes())
        .unwrap_err()
        .to_string();
    assert!(e.contains("e3.csv:1") && e.contains("not in (0, 1]"), "{e}");
}

#[test]
fn cosine_similarity_of_class_embeddings() {
    let emb = [1.0, 0.0, 1.0, 1.0, 0.0, 2.0, -1.0, 0.0];
    let s = similarity_from_embeddings(&emb, 4, 2);
    assert!((s[0] - 1.0).abs() < 1e-12);
    assert!((s[1] - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
    assert!(s[2].abs() < 1e-12);
    assert!((s[3] + 1.0).abs() < 1e-12);
}

#[test]
fn soft_targets_keep_one_hot_for_classes_without_neighbours() {
    // Class 2 is similar to nothing (its row is zero off the diagonal); negatives count as 0.
    let sim = [1.0, 0.5, 0.0, 0.25, 1.0, -0.5, 0.0, 0.0, 1.0];
    let t = soft_targets(&sim, 3, 0.1);
    assert_eq!(&t[0..3], &[0.9, 0.1, 0.0]);
    assert!((t[3] - 0.1).abs() < 1e-15 && t[4] == 0.9 && t[5] == 0.0);
    assert_eq!(&t[6..9], &[0.0, 0.0, 1.0]);
}
