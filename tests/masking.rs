//! Whole-word and term masking for masked-language-model pretraining (src/data/masking.rs),
//! over a corpus of synthetic records tokenized with bert-base-chinese's vocabulary: the masked
//! fraction, the 80/10/10 split and the change between epochs within binomial bounds; a word or
//! listed term is never split; special tokens are never masked; a seed replays its masks.

use std::path::PathBuf;

use emrclass::data::masking::{
    group_records, mask_sequence, masked_batch, sequence_rng, word_records, word_tokens, Grouping,
    MaskTokens, MaskedSequence, MaskingRule, WordSegmenter, WordSequence, WordTokens,
    NOT_PREDICTED, NO_WORD,
};
use emrclass::data::synthetic;
use emrclass::data::tokenizer::BertTokenizer;

fn tokenizer() -> BertTokenizer {
    let vocab = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bert-base-chinese/vocab.txt");
    BertTokenizer::from_vocab(&vocab).unwrap()
}

/// The first `n` synthetic records of `seed`, tokenized with their words.
fn records(tk: &BertTokenizer, seg: &WordSegmenter, seed: u64, n: usize) -> Vec<WordTokens> {
    let texts: Vec<String> = synthetic::generate(seed, 1.0)
        .into_iter()
        .take(n)
        .map(|e| e.text)
        .collect();
    word_records(tk, seg, &texts).unwrap()
}

/// Sequences as pretraining builds them: [CLS] record [SEP], words numbered across records.
fn corpus(tk: &BertTokenizer, seg: &WordSegmenter) -> Vec<(Vec<i32>, Vec<u32>)> {
    let (cls, sep) = (tk.token_id("[CLS]").unwrap(), tk.token_id("[SEP]").unwrap());
    group_records(
        &records(tk, seg, 11, 400),
        512,
        Grouping::LineByLine,
        cls,
        sep,
    )
    .into_iter()
    .map(|s| (s.ids, s.words))
    .collect()
}

fn terms() -> Vec<String> {
    vec!["二甲双胍".into(), "胸闷痛".into()]
}

fn mask_all(
    corpus: &[(Vec<i32>, Vec<u32>)],
    tokens: &MaskTokens,
    seed: u64,
    epoch: u64,
) -> Vec<MaskedSequence> {
    let rule = MaskingRule::default();
    corpus
        .iter()
        .enumerate()
        .map(|(s, (ids, words))| {
            mask_sequence(
                ids,
                words,
                &rule,
                tokens,
                &mut sequence_rng(seed, epoch, s as u64),
            )
        })
        .collect()
}

/// Word runs of a sequence: (start, end) position ranges of equal word values.
fn runs(words: &[u32]) -> Vec<(usize, usize)> {
    let mut out = vec![];
    let mut i = 0;
    while i < words.len() {
        let mut j = i + 1;
        while j < words.len() && words[j] == words[i] {
            j += 1;
        }
        if words[i] != NO_WORD {
            out.push((i, j));
        }
        i = j;
    }
    out
}

/// |k - n p| within 5 standard deviations of a binomial(n, p).
fn within_binomial(k: usize, n: usize, p: f64) -> bool {
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    (k as f64 - n as f64 * p).abs() <= 5.0 * sd
}

#[test]
fn listed_terms_take_precedence_over_the_segmenter() {
    let text = "既往2型糖尿病史，口服二甲双胍。";
    let plain = WordSegmenter::new(&[]).unwrap();
    let listed = WordSegmenter::new(&terms()).unwrap();
    let span = |seg: &WordSegmenter| -> Vec<String> {
        seg.words(text)
            .iter()
            .map(|&(a, b)| text[a..b].to_string())
            .collect()
    };
    // jieba alone splits the drug name; the list keeps it whole.
    assert!(
        !span(&plain).contains(&"二甲双胍".to_string()),
        "{:?}",
        span(&plain)
    );
    assert!(
        span(&listed).contains(&"二甲双胍".to_string()),
        "{:?}",
        span(&listed)
    );
    // The words cover the text, in order, with no gap or overlap.
    let words = listed.words(text);
    assert_eq!(words.first().unwrap().0, 0);
    assert_eq!(words.last().unwrap().1, text.len());
    assert!(words.windows(2).all(|w| w[0].1 == w[1].0));
    // Every character of the term shares one word in the tokens.
    let wt = word_tokens(&tokenizer(), &listed, text, 0).unwrap();
    let start = text.find("二甲双胍").unwrap();
    let tk = tokenizer();
    let (_, offsets) = tk.encode_with_offsets(text).unwrap();
    let in_term: Vec<u32> = offsets
        .iter()
        .zip(&wt.words)
        .filter(|((a, _), _)| *a >= start && *a < start + "二甲双胍".len())
        .map(|(_, &w)| w)
        .collect();
    assert_eq!(in_term.len(), 4, "a token per character");
    assert!(in_term.iter().all(|&w| w == in_term[0]));
}

#[test]
fn masks_whole_words_at_the_rate_and_split_within_binomial_bounds() {
    let tk = tokenizer();
    let seg = WordSegmenter::new(&terms()).unwrap();
    let corpus = corpus(&tk, &seg);
    let tokens = MaskTokens::from_tokenizer(&tk).unwrap();
    let masked = mask_all(&corpus, &tokens, 7, 0);
    let (mut maskable, mut predicted) = (0, 0);
    let (mut words_predicted, mut as_mask, mut as_random) = (0, 0, 0);
    let mut longest_word = 0;
    for ((ids, words), m) in corpus.iter().zip(&masked) {
        let mut seq_predicted = 0;
        for (p, &w) in words.iter().enumerate() {
            if w == NO_WORD {
                assert_eq!(m.labels[p], NOT_PREDICTED, "a special token was masked");
                assert_eq!(m.input_ids[p], ids[p]);
            }
        }
        for (a, b) in runs(words) {
            longest_word = longest_word.max(b - a);
            maskable += b - a;
            let chosen: Vec<bool> = (a..b).map(|p| m.labels[p] != NOT_PREDICTED).collect();
            assert!(
                chosen.iter().all(|&c| c == chosen[0]),
                "word {a}..{b} split: {chosen:?}"
            );
            if !chosen[0] {
                assert_eq!(&m.input_ids[a..b], &ids[a..b]);
                continue;
            }
            assert_eq!(
                &m.labels[a..b],
                &ids[a..b],
                "labels are the original tokens"
            );
            seq_predicted += b - a;
            words_predicted += 1;
            let all_mask = (a..b).all(|p| m.input_ids[p] == tokens.mask_id);
            let any_mask = (a..b).any(|p| m.input_ids[p] == tokens.mask_id);
            assert!(all_mask || !any_mask, "word {a}..{b} half masked");
            if all_mask {
                as_mask += 1;
            } else if m.input_ids[a..b] != ids[a..b] {
                as_random += 1;
            }
        }
        let target = ((runs(words).iter().map(|(a, b)| b - a).sum::<usize>() as f64 * 0.15).round()
            as usize)
            .max(1);
        assert!(seq_predicted <= target, "{seq_predicted} > {target}");
        assert!(
            seq_predicted + longest_word > target,
            "{seq_predicted} far below {target}"
        );
        predicted += seq_predicted;
    }
    let fraction = predicted as f64 / maskable as f64;
    assert!((0.13..=0.155).contains(&fraction), "masked {fraction}");
    assert!(
        within_binomial(as_mask, words_predicted, 0.8),
        "{as_mask} of {words_predicted} words as [MASK]"
    );
    // A random draw can equal the original token (1 in ~21,000): counted as kept.
    assert!(
        within_binomial(as_random, words_predicted, 0.1),
        "{as_random} of {words_predicted} words random"
    );
    // Random replacements are ordinary tokens, never [PAD]/[CLS]/[SEP]/[UNK]/[MASK].
    let specials: Vec<i32> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|t| tk.token_id(t).unwrap())
        .collect();
    for t in &specials {
        assert!(!tokens.random_pool.contains(t));
    }
}

#[test]
fn masks_change_every_epoch_and_replay_from_the_seed() {
    let tk = tokenizer();
    let seg = WordSegmenter::new(&terms()).unwrap();
    let corpus = corpus(&tk, &seg);
    let tokens = MaskTokens::from_tokenizer(&tk).unwrap();
    let epoch0 = mask_all(&corpus, &tokens, 7, 0);
    assert_eq!(
        epoch0,
        mask_all(&corpus, &tokens, 7, 0),
        "same seed, same masks"
    );
    let epoch1 = mask_all(&corpus, &tokens, 7, 1);
    let other_seed = mask_all(&corpus, &tokens, 8, 0);
    assert_ne!(epoch0, other_seed);
    // Masks drawn afresh: a position predicted in epoch 0 is predicted again in epoch 1 about
    // as often as any position is (15 %), not always.
    let (mut predicted0, mut again) = (0, 0);
    for (a, b) in epoch0.iter().zip(&epoch1) {
        for (la, lb) in a.labels.iter().zip(&b.labels) {
            if *la != NOT_PREDICTED {
                predicted0 += 1;
                again += (*lb != NOT_PREDICTED) as usize;
            }
        }
    }
    let changed = epoch0.iter().zip(&epoch1).filter(|(a, b)| a != b).count();
    assert!(
        changed * 10 >= corpus.len() * 9,
        "only {changed} sequences changed"
    );
    assert!(
        within_binomial(again, predicted0, 0.15),
        "{again} of {predicted0} positions masked in both epochs"
    );
}

#[test]
fn term_lists_that_hold_nothing_or_are_not_text_are_named_errors() {
    let dir = std::env::temp_dir().join(format!("emrclass-terms-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "\n  \n").unwrap();
    let err = WordSegmenter::from_term_file(&empty)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("empty.txt") && err.contains("no terms"),
        "{err}"
    );
    let binary = dir.join("gbk.txt");
    std::fs::write(&binary, [0xb6u8, 0xfe, 0xbc, 0xd7, b'\n']).unwrap();
    let err = WordSegmenter::from_term_file(&binary)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("gbk.txt") && err.contains("UTF-8"), "{err}");
    let missing = dir.join("missing.txt");
    let err = WordSegmenter::from_term_file(&missing)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing.txt"), "{err}");
    let good = dir.join("terms.txt");
    std::fs::write(&good, "二甲双胍\n\n胸闷痛\n").unwrap();
    assert_eq!(
        WordSegmenter::from_term_file(&good).unwrap().term_count(),
        2
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn records_group_into_blocks_or_lines_and_lose_no_token() {
    let tk = tokenizer();
    let seg = WordSegmenter::new(&terms()).unwrap();
    let (cls, sep) = (tk.token_id("[CLS]").unwrap(), tk.token_id("[SEP]").unwrap());
    let records = records(&tk, &seg, 3, 50);
    let total: usize = records.iter().map(|r| r.ids.len()).sum();
    for max_len in [3, 17, 64] {
        let blocks = group_records(&records, max_len, Grouping::Blocks, cls, sep);
        let lines = group_records(&records, max_len, Grouping::LineByLine, cls, sep);
        assert_eq!(lines.len(), records.len());
        for s in blocks.iter().chain(&lines) {
            assert!(s.ids.len() <= max_len && s.ids.len() >= 3);
            assert_eq!((s.ids[0], *s.ids.last().unwrap()), (cls, sep));
            assert_eq!(s.ids.len(), s.words.len());
            for (id, w) in s.ids.iter().zip(&s.words) {
                assert_eq!(*w == NO_WORD, *id == cls || *id == sep);
            }
        }
        // Blocks keep every record token, in order, separated by one [SEP] per record boundary.
        let body: Vec<i32> = blocks
            .iter()
            .flat_map(|s| s.ids[1..s.ids.len() - 1].to_vec())
            .collect();
        let expected: Vec<i32> = records
            .iter()
            .enumerate()
            .flat_map(|(k, r)| {
                let mut v = if k > 0 { vec![sep] } else { vec![] };
                v.extend(&r.ids);
                v
            })
            .collect();
        assert_eq!(body, expected);
        assert_eq!(body.len(), total + records.len() - 1);
        // Lines: each record's first tokens.
        for (s, r) in lines.iter().zip(&records) {
            let n = r.ids.len().min(max_len - 2);
            assert_eq!(&s.ids[1..1 + n], &r.ids[..n]);
        }
    }
}

#[test]
fn a_batch_masks_each_sequence_as_alone_whatever_its_company() {
    let tk = tokenizer();
    let seg = WordSegmenter::new(&terms()).unwrap();
    let tokens = MaskTokens::from_tokenizer(&tk).unwrap();
    let (cls, sep, pad) = (
        tk.token_id("[CLS]").unwrap(),
        tk.token_id("[SEP]").unwrap(),
        tk.token_id("[PAD]").unwrap(),
    );
    let records = records(&tk, &seg, 5, 12);
    let seqs = group_records(&records, 40, Grouping::LineByLine, cls, sep);
    let rule = MaskingRule::default();
    let all: Vec<(usize, &WordSequence)> = seqs.iter().enumerate().collect();
    let whole = masked_batch(&all, 9, 2, &rule, &tokens, pad);
    assert_eq!(whole.batch, seqs.len());
    assert_eq!(whole.len, seqs.iter().map(|s| s.ids.len()).max().unwrap());
    // Positions ascend, point at real tokens, and hold the original token as label.
    assert!(whole.positions.windows(2).all(|w| w[0] < w[1]));
    for (&p, &label) in whole.positions.iter().zip(&whole.labels) {
        let (row, col) = (p as usize / whole.len, p as usize % whole.len);
        assert_eq!(whole.attention_mask[p as usize], 1);
        assert_eq!(seqs[row].ids[col], label);
    }
    // Padding: [PAD] ids with mask 0 past each sequence.
    for (row, s) in seqs.iter().enumerate() {
        let r = &whole.input_ids[row * whole.len..(row + 1) * whole.len];
        assert!(r[s.ids.len()..].iter().all(|&id| id == pad));
        let m = &whole.attention_mask[row * whole.len..(row + 1) * whole.len];
        assert_eq!(m.iter().sum::<i32>() as usize, s.ids.len());
    }
    // A sequence in a batch of its own, in another order, is masked the same.
    for (row, pair) in all.iter().enumerate().rev() {
        let alone = masked_batch(&[*pair], 9, 2, &rule, &tokens, pad);
        let n = pair.1.ids.len();
        assert_eq!(
            &alone.input_ids[..n],
            &whole.input_ids[row * whole.len..row * whole.len + n]
        );
    }
    // Another epoch masks differently.
    assert_ne!(masked_batch(&all, 9, 3, &rule, &tokens, pad), whole);
}

/// `--mask-unit token`: every token its own unit, as BERT and run_mlm.py mask: the same tokens
/// as whole-word masking reads, each sequence masked to exactly the rate (no word overshoots
/// it), and across the corpus words masked in part, which whole-word masking never does.
#[test]
fn token_masking_takes_tokens_one_at_a_time() {
    use emrclass::data::masking::token_records;
    let tk = tokenizer();
    let seg = WordSegmenter::new(&terms()).unwrap();
    let texts: Vec<String> = synthetic::generate(11, 1.0)
        .into_iter()
        .take(400)
        .map(|e| e.text)
        .collect();
    let by_word = word_records(&tk, &seg, &texts).unwrap();
    let by_token = token_records(&tk, &texts).unwrap();
    let mut last = None;
    for (w, t) in by_word.iter().zip(&by_token) {
        assert_eq!(w.ids, t.ids, "the same tokens");
        for &u in &t.words {
            assert!(
                last.is_none_or(|l| u > l),
                "one unit per token, numbered on"
            );
            last = Some(u);
        }
    }
    let (cls, sep) = (tk.token_id("[CLS]").unwrap(), tk.token_id("[SEP]").unwrap());
    let corpus: Vec<(Vec<i32>, Vec<u32>)> =
        group_records(&by_token, 512, Grouping::LineByLine, cls, sep)
            .into_iter()
            .map(|s| (s.ids, s.words))
            .collect();
    let tokens = MaskTokens::from_tokenizer(&tk).unwrap();
    let masked = mask_all(&corpus, &tokens, 7, 0);
    let mut partly_masked_words = 0;
    for (((ids, words), m), w) in corpus.iter().zip(&masked).zip(&by_word) {
        let maskable = words.iter().filter(|&&u| u != NO_WORD).count();
        let predicted = m.labels.iter().filter(|&&l| l != NOT_PREDICTED).count();
        let target = ((maskable as f64 * 0.15).round() as usize).max(1);
        assert_eq!(predicted, target, "{ids:?}");
        // The record's jieba words, on the sequence's positions (after [CLS]).
        for (a, b) in runs(&w.words) {
            let chosen = (a..b).filter(|&p| m.labels[p + 1] != NOT_PREDICTED).count();
            partly_masked_words += usize::from(chosen > 0 && chosen < b - a);
        }
    }
    assert!(partly_masked_words > 50, "{partly_masked_words}");
}
