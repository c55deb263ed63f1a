//! Evaluation metrics against values computed by hand (in the comments) or known from
//! scikit-learn, and against brute-force definitions on random data.

use deeptune_engine::metrics::{
    BinaryCounts, ConceptMetrics, ConceptScores, Evaluation, MAX_CURVE_POINTS, PredictedBy, Predictions,
    PredictionsError, RocPoint, best_f1_threshold, evaluate, threshold_for_precision, threshold_for_recall,
};

const EPS: f32 = 1e-6;

fn close(actual: f32, expected: f32) -> bool {
    (actual - expected).abs() <= EPS
}

#[track_caller]
fn assert_close(actual: f32, expected: f32) {
    assert!(close(actual, expected), "{actual} != {expected}");
}

#[track_caller]
fn assert_some_close(actual: Option<f32>, expected: f32) {
    assert_close(actual.expect("a value"), expected);
}

/// Builds predictions from rows of probabilities and rows of 0/1 labels.
fn predictions(concepts: &[&str], probabilities: &[&[f32]], labels: &[&[u8]], exclusive: bool) -> Predictions {
    Predictions {
        concepts: concepts.iter().map(|c| c.to_string()).collect(),
        input_ids: (0..probabilities.len()).map(|i| format!("input-{i}")).collect(),
        probabilities: probabilities.concat(),
        labels: labels.iter().flat_map(|row| row.iter().map(|&l| l as f32)).collect(),
        label_known: None,
        mutually_exclusive: exclusive,
    }
}

/// One concept from scores and 0/1 labels.
fn binary(scores: &[f32], labels: &[u8], threshold: f32) -> ConceptMetrics {
    let positives = scores.iter().zip(labels).filter(|&(_, &l)| l == 1).map(|(&s, _)| s).collect();
    let negatives = scores.iter().zip(labels).filter(|&(_, &l)| l == 0).map(|(&s, _)| s).collect();
    ConceptMetrics::from_scores("c".into(), ConceptScores::new(positives, negatives), threshold)
}

#[test]
fn sklearn_example() {
    // roc_auc_score([0,0,1,1],[0.1,0.4,0.35,0.8]) = 0.75, average_precision_score = 0.8333.
    // Descending: 0.8 (+) → tp1 fp0; 0.4 (−) → tp1 fp1; 0.35 (+) → tp2 fp1; 0.1 (−) → tp2 fp2.
    // AP = ½·1 + ½·⅔ = 5/6.
    let m = binary(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1], 0.5);
    assert_some_close(m.roc_auc, 0.75);
    assert_some_close(m.average_precision, 5.0 / 6.0);
    // At 0.5 only 0.8 is predicted: tp1 fp0 tn2 fn1.
    let counts = BinaryCounts { true_positives: 1, false_positives: 0, true_negatives: 2, false_negatives: 1 };
    assert_eq!(m.counts, counts);
    assert_close(m.precision, 1.0);
    assert_close(m.recall, 0.5);
    assert_close(m.f1, 2.0 / 3.0);
    // scikit-learn's roc_curve: fpr [0,0,.5,.5,1], tpr [0,.5,.5,1,1], thresholds [inf,.8,.4,.35,.1].
    let start = 1.0f32.next_up();
    let roc: Vec<RocPoint> = [(start, 0.0, 0.0), (0.8, 0.0, 0.5), (0.4, 0.5, 0.5), (0.35, 0.5, 1.0), (0.1, 1.0, 1.0)]
        .into_iter()
        .map(|(threshold, fpr, tpr)| RocPoint { threshold, fpr, tpr })
        .collect();
    assert_eq!(m.roc_curve, roc);
    // The PR curve: (P, R) = (1, 0) start, (1, .5), (.5, .5), (⅔, 1), (.5, 1).
    let pr: Vec<(f32, f32, f32)> = m.pr_curve.iter().map(|p| (p.threshold, p.precision, p.recall)).collect();
    assert_eq!(pr, [(start, 1.0, 0.0), (0.8, 1.0, 0.5), (0.4, 0.5, 0.5), (0.35, 2.0 / 3.0, 1.0), (0.1, 0.5, 1.0)]);
}

#[test]
fn precision_recall_at_any_threshold() {
    let m = binary(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1], 0.5);
    // ≥ 0.36: 0.8 (+) and 0.4 (−): P ½, R ½, F1 ½.
    assert_eq!(m.precision_recall_at(0.36), (0.5, 0.5, 0.5));
    // ≥ 0.35 includes the tied-equal 0.35 (+): P ⅔, R 1, F1 0.8.
    let (p, r, f) = m.precision_recall_at(0.35);
    assert!(close(p, 2.0 / 3.0) && close(r, 1.0) && close(f, 0.8));
    // Nothing predicted: 0/0 precision is 0.
    assert_eq!(m.precision_recall_at(0.9), (0.0, 0.0, 0.0));
    assert_eq!(m.precision_recall_at(0.0), (0.5, 1.0, 2.0 / 3.0));
}

#[test]
fn perfect_inverted_and_tied_classifiers() {
    let labels = [0, 0, 1, 1];
    let perfect = binary(&[0.1, 0.2, 0.8, 0.9], &labels, 0.5);
    assert_some_close(perfect.roc_auc, 1.0);
    assert_some_close(perfect.average_precision, 1.0);
    assert_eq!((perfect.precision, perfect.recall, perfect.f1), (1.0, 1.0, 1.0));
    // A perfect ROC curve has 3 corners: (0,0), (0,1), (1,1); (0, ½) and (½, 1) are dropped as
    // points in the middle of straight segments.
    let corners: Vec<(f32, f32)> = perfect.roc_curve.iter().map(|p| (p.fpr, p.tpr)).collect();
    assert_eq!(corners, [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)]);

    let inverted = binary(&[0.9, 0.8, 0.2, 0.1], &labels, 0.5);
    assert_some_close(inverted.roc_auc, 0.0);
    // Descending: −, −, + (tp1 fp2, P ⅓), + (tp2 fp2, P ½): AP = ½·⅓ + ½·½ = 5/12.
    assert_some_close(inverted.average_precision, 5.0 / 12.0);
    assert_eq!((inverted.precision, inverted.recall, inverted.f1), (0.0, 0.0, 0.0));

    // All scores equal: one diagonal step, AUC ½; AP = precision of the single step = 2/4.
    let tied = binary(&[0.5; 4], &labels, 0.5);
    assert_some_close(tied.roc_auc, 0.5);
    assert_some_close(tied.average_precision, 0.5);
    let points: Vec<(f32, f32)> = tied.roc_curve.iter().map(|p| (p.fpr, p.tpr)).collect();
    assert_eq!(points, [(0.0, 0.0), (1.0, 1.0)]);

    // Partial ties: pos {0.7, 0.5}, neg {0.5, 0.2}. Pairs: 0.7 beats both (2), 0.5 ties 0.5 (½)
    // and beats 0.2 (1): 3.5 / 4.
    let partial = binary(&[0.7, 0.5, 0.5, 0.2], &[1, 1, 0, 0], 0.5);
    assert_some_close(partial.roc_auc, 0.875);
    // Descending groups: {0.7+} tp1 fp0 P1; {0.5+,0.5−} tp2 fp1 P⅔: AP = ½ + ½·⅔ = 5/6.
    assert_some_close(partial.average_precision, 5.0 / 6.0);
}

#[test]
fn order_of_inputs_does_not_matter() {
    let a = binary(&[0.7, 0.5, 0.5, 0.2, 0.5], &[1, 1, 0, 0, 1], 0.5);
    let b = binary(&[0.5, 0.2, 0.5, 0.5, 0.7], &[0, 0, 1, 1, 1], 0.5);
    assert_eq!(a, b);
}

#[test]
fn threshold_helpers() {
    // The sklearn example's curve: (threshold: P, R, F1) = (0.8: 1, ½, ⅔), (0.4: ½, ½, ½),
    // (0.35: ⅔, 1, 0.8), (0.1: ½, 1, ⅔).
    let m = binary(&[0.1, 0.4, 0.35, 0.8], &[0, 0, 1, 1], 0.5);
    let curve = &m.pr_curve;
    assert_eq!(best_f1_threshold(curve), 0.35);
    assert_eq!(threshold_for_precision(curve, 0.9), Some(0.8));
    assert_eq!(threshold_for_precision(curve, 0.6), Some(0.35));
    assert_eq!(threshold_for_precision(curve, 0.5), Some(0.1));
    // The start point's precision 1 is a drawing convention, not a usable threshold.
    assert_eq!(threshold_for_precision(curve, 1.01), None);
    assert_eq!(threshold_for_recall(curve, 0.5), Some(0.8));
    assert_eq!(threshold_for_recall(curve, 0.75), Some(0.35));
    assert_eq!(threshold_for_recall(curve, 1.0), Some(0.35));
    assert_eq!(threshold_for_recall(curve, 1.1), None);
    assert_eq!(m.full_pr_curve(), m.pr_curve);
    // Without positives no point has a positive F1: the threshold that predicts nothing.
    let negatives_only = binary(&[0.2, 0.6], &[0, 0], 0.5);
    assert_eq!(best_f1_threshold(&negatives_only.pr_curve), 1.0f32.next_up());
    assert_eq!(best_f1_threshold(&[]), f32::INFINITY);
}

/// The 3-class example of the confusion-matrix test:
/// input  true  cat  dog  bird  argmax
///   0    cat   0.7  0.2  0.1   cat
///   1    cat   0.3  0.6  0.1   dog
///   2    dog   0.1  0.8  0.1   dog
///   3    dog   0.2  0.3  0.5   bird
///   4    bird  0.1  0.1  0.8   bird
fn three_classes() -> Predictions {
    let probabilities: [&[f32]; 5] =
        [&[0.7, 0.2, 0.1], &[0.3, 0.6, 0.1], &[0.1, 0.8, 0.1], &[0.2, 0.3, 0.5], &[0.1, 0.1, 0.8]];
    let labels: [&[u8]; 5] = [&[1, 0, 0], &[1, 0, 0], &[0, 1, 0], &[0, 1, 0], &[0, 0, 1]];
    predictions(&["cat", "dog", "bird"], &probabilities, &labels, true)
}

#[test]
fn mutually_exclusive_three_classes() {
    let evaluation = evaluate(&three_classes(), 0.5);
    let matrix = &evaluation.confusion_matrix;
    assert_eq!(matrix.predicted_by, PredictedBy::Argmax);
    assert_eq!(matrix.counts, [[1, 1, 0], [0, 1, 1], [0, 0, 1]]);
    assert_eq!(matrix.row_inputs, [2, 2, 1]);
    assert_eq!(matrix.unpredicted, [0, 0, 0]);
    // Row means: cat = mean(inputs 0, 1), dog = mean(2, 3), bird = input 4.
    let expected = [[0.5, 0.4, 0.1], [0.15, 0.55, 0.3], [0.1, 0.1, 0.8]];
    for (row, expected_row) in matrix.mean_probabilities.iter().zip(expected) {
        for (&cell, expected) in row.iter().zip(expected_row) {
            assert_some_close(cell, expected);
        }
    }
    assert_eq!(evaluation.inputs_in_cell(0, 1), ["input-1"]);
    assert_eq!(evaluation.inputs_in_cell(1, 2), ["input-3"]);
    assert_eq!(evaluation.inputs_in_cell(0, 0), ["input-0"]);
    assert!(evaluation.inputs_in_cell(2, 0).is_empty());
    // One-vs-rest of the argmax: dog is predicted for inputs 1 (a cat) and 2 (a dog), and missed
    // for input 3.
    let dog = BinaryCounts { true_positives: 1, false_positives: 1, true_negatives: 2, false_negatives: 1 };
    assert_eq!(matrix.binary[1], dog);

    let summary = &evaluation.summary;
    assert_eq!((summary.inputs, summary.concepts, summary.labeled_inputs), (5, 3, 5));
    // Inputs 0, 2, 4 are right; 1 and 3 have their class second; top-5 of 3 classes is always right.
    assert_some_close(summary.top1_accuracy, 0.6);
    assert_some_close(summary.top5_accuracy, 1.0);
    let ranks: Vec<Option<usize>> = evaluation.per_input.iter().map(|i| i.true_concept_rank).collect();
    assert_eq!(ranks, [Some(0), Some(1), Some(0), Some(1), Some(0)]);

    // Per concept at 0.5 (≥, so bird's 0.5 on input 3 counts as predicted):
    //   cat:  pos {.7,.3} neg {.2,.1,.1}: tp1 fp0 fn1, P 1, R ½, F1 ⅔; AUC 1; AP 1.
    //   dog:  pos {.8,.3} neg {.2,.6,.1}: tp1 fp1 fn1, P ½, R ½, F1 ½; AUC (3+2)/6; AP ½+½·⅔ = 5/6.
    //   bird: pos {.8} neg {.1,.1,.1,.5}: tp1 fp1 fn0, P ½, R 1, F1 ⅔; AUC 1; AP 1.
    let expected =
        [(1.0, 0.5, 2.0 / 3.0, 1.0, 1.0), (0.5, 0.5, 0.5, 5.0 / 6.0, 5.0 / 6.0), (0.5, 1.0, 2.0 / 3.0, 1.0, 1.0)];
    for (concept, (precision, recall, f1, auc, ap)) in evaluation.per_concept.iter().zip(expected) {
        assert_close(concept.precision, precision);
        assert_close(concept.recall, recall);
        assert_close(concept.f1, f1);
        assert_some_close(concept.roc_auc, auc);
        assert_some_close(concept.average_precision, ap);
    }
    // Macro: AUC = AP = (1 + 5/6 + 1)/3 = 17/18; P = (1 + ½ + ½)/3; R = (½ + ½ + 1)/3;
    // F1 = (⅔ + ½ + ⅔)/3 = 11/18.
    assert_some_close(summary.macro_roc_auc, 17.0 / 18.0);
    assert_some_close(summary.macro_average_precision, 17.0 / 18.0);
    assert_some_close(summary.macro_precision, 2.0 / 3.0);
    assert_some_close(summary.macro_recall, 2.0 / 3.0);
    assert_some_close(summary.macro_f1, 11.0 / 18.0);
    // Micro: tp 3, fp 2, fn 2.
    assert_close(summary.micro_precision, 0.6);
    assert_close(summary.micro_recall, 0.6);
    assert_close(summary.micro_f1, 0.6);
    // Pooled: positives {.7,.3,.8,.3,.8} over 10 negatives (two of them .6 and .5, the rest ≤ .2):
    // .7 and .8 beat all 10, .3 beats 8: (3·10 + 2·8) / 50 = 0.92.
    assert_some_close(summary.micro_roc_auc, 0.92);

    let first = &evaluation.per_input[1];
    assert_eq!(first.true_concepts, ["cat"]);
    let top: Vec<(&str, f32)> = first.top_concepts.iter().map(|c| (c.concept.as_str(), c.probability)).collect();
    assert_eq!(top, [("dog", 0.6), ("cat", 0.3), ("bird", 0.1)]);
    assert_eq!(first.top1_correct, Some(false));
}

#[test]
fn multi_label_with_a_concept_without_positives() {
    // concepts a, b, c; c is never positive.
    // input  labels   probabilities   predicted at 0.5   top-1
    //   0    a        .9  .6  .2      a, b              a ✓
    //   1    a, b     .3  .7  .4      b                 b ✓
    //   2    b        .8  .4  .1      a                 a ✗ (b second)
    //   3    —        .1  .2  .6      c                 (no positive: not in accuracy)
    let probabilities: [&[f32]; 4] = [&[0.9, 0.6, 0.2], &[0.3, 0.7, 0.4], &[0.8, 0.4, 0.1], &[0.1, 0.2, 0.6]];
    let labels: [&[u8]; 4] = [&[1, 0, 0], &[1, 1, 0], &[0, 1, 0], &[0, 0, 0]];
    let evaluation = evaluate(&predictions(&["a", "b", "c"], &probabilities, &labels, false), 0.5);
    let summary = &evaluation.summary;
    assert_eq!(summary.labeled_inputs, 3);
    assert_some_close(summary.top1_accuracy, 2.0 / 3.0);
    assert_some_close(summary.top5_accuracy, 1.0);

    let c = &evaluation.per_concept[2];
    assert_eq!((c.positives, c.negatives), (0, 4));
    assert_eq!((c.roc_auc, c.average_precision), (None, None));
    // c's false positive (input 3) is in the micro precision but c is not in the macro means.
    assert_eq!((summary.roc_auc_concepts, summary.concepts_with_positives), (2, 2));
    // a: pos {.9,.3} neg {.8,.1}: .9 beats both, .3 beats .1: ¾.
    // b: pos {.7,.4} neg {.6,.2}: .7 beats both, .4 beats .2: ¾.
    assert_some_close(evaluation.per_concept[0].roc_auc, 0.75);
    assert_some_close(evaluation.per_concept[1].roc_auc, 0.75);
    assert_some_close(summary.macro_roc_auc, 0.75);
    // a at .5: tp1 (.9) fp1 (.8) fn1 → P ½ R ½; b: tp1 (.7) fp1 (.6) fn1 (.4) → P ½ R ½.
    assert_some_close(summary.macro_precision, 0.5);
    assert_some_close(summary.macro_recall, 0.5);
    // Micro: tp 2, fp 2 + c's 1, fn 2: P 2/5, R ½, F1 = 2·.4·.5/.9 = 4/9.
    assert_close(summary.micro_precision, 0.4);
    assert_close(summary.micro_recall, 0.5);
    assert_close(summary.micro_f1, 4.0 / 9.0);

    let matrix = &evaluation.confusion_matrix;
    assert_eq!(matrix.predicted_by, PredictedBy::Threshold);
    // Row a: inputs 0 (predicts a, b) and 1 (predicts b). Row b: inputs 1 (b) and 2 (a).
    assert_eq!(matrix.counts, [[1, 2, 0], [1, 1, 0], [0, 0, 0]]);
    assert_eq!(matrix.row_inputs, [2, 2, 0]);
    assert_eq!(evaluation.inputs_in_cell(0, 1), ["input-0", "input-1"]);
    assert_eq!(matrix.mean_probabilities[2], [None, None, None]);
    assert_some_close(matrix.mean_probabilities[1][0], 0.55);
    for (binary, concept) in matrix.binary.iter().zip(&evaluation.per_concept) {
        assert_eq!(*binary, concept.counts);
    }
    assert_eq!(evaluation.per_input[3].true_concept_rank, None);
    assert_eq!(evaluation.per_input[2].true_concept_rank, Some(1));
}

#[test]
fn unknown_labels_are_left_out() {
    // Input 1's label for `a` is unknown: `a` is then judged on inputs 0 and 2 only, and input 1's
    // ranking skips `a` (its highest score), so its top-1 among known concepts is `b`, a positive.
    let probabilities: [&[f32]; 3] = [&[0.9, 0.1], &[0.8, 0.6], &[0.2, 0.7]];
    let labels: [&[u8]; 3] = [&[1, 0], &[0, 1], &[0, 1]];
    let mut predictions = predictions(&["a", "b"], &probabilities, &labels, false);
    predictions.label_known = Some(vec![true, true, false, true, true, true]);
    let evaluation = evaluate(&predictions, 0.5);
    let a = &evaluation.per_concept[0];
    assert_eq!((a.positives, a.negatives), (1, 1));
    assert_eq!(a.counts.false_positives, 0);
    assert_eq!(evaluation.per_input[1].top1_correct, Some(true));
    assert_eq!(evaluation.per_input[1].top_concepts[0].concept, "a");
    assert_some_close(evaluation.summary.top1_accuracy, 1.0);
}

#[test]
fn ties_within_an_input_rank_the_first_concept_first() {
    let probabilities: [&[f32]; 1] = [&[0.25; 4]];
    let labels: [&[u8]; 1] = [&[0, 0, 1, 0]];
    let evaluation = evaluate(&predictions(&["a", "b", "c", "d"], &probabilities, &labels, true), 0.5);
    assert_eq!(evaluation.per_input[0].true_concept_rank, Some(2));
    assert_eq!(evaluation.confusion_matrix.counts[2], [1, 0, 0, 0]);
}

#[test]
fn invalid_predictions() {
    let mut p = three_classes();
    p.labels[1] = 1.0;
    assert_eq!(p.validate(), Err(PredictionsError::SeveralPositives { input: 0, positives: 2 }));
    p.mutually_exclusive = false;
    assert_eq!(p.validate(), Ok(()));
    p.labels[2] = 0.5;
    assert_eq!(p.validate(), Err(PredictionsError::Label { input: 0, concept: 2, value: 0.5 }));
    p.labels.pop();
    assert!(matches!(p.validate(), Err(PredictionsError::Shape { field: "labels", actual: 14, expected: 15 })));
    let mut p = three_classes();
    p.probabilities[4] = f32::NAN;
    assert!(matches!(p.validate(), Err(PredictionsError::NotFinite { input: 1, concept: 1, .. })));
}

#[test]
fn empty_evaluation() {
    let evaluation = evaluate(&predictions(&["a", "b"], &[], &[], true), 0.5);
    assert_eq!(evaluation.summary.top1_accuracy, None);
    assert_eq!(evaluation.summary.macro_roc_auc, None);
    assert_eq!(evaluation.summary.micro_f1, 0.0);
    assert_eq!(evaluation.per_concept[0].pr_curve.len(), 1);
    assert_eq!(evaluation.per_concept[0].precision_recall_at(0.5), (0.0, 0.0, 0.0));
}

#[test]
fn json_round_trip_and_stripped_scores() {
    let evaluation = evaluate(&three_classes(), 0.5);
    let json = serde_json::to_string(&evaluation).unwrap();
    assert_eq!(serde_json::from_str::<Evaluation>(&json).unwrap(), evaluation);

    let mut stripped = evaluation.clone();
    stripped.strip_scores();
    let json = serde_json::to_string(&stripped).unwrap();
    assert!(!json.contains("\"scores\""));
    let stripped: Evaluation = serde_json::from_str(&json).unwrap();
    // Unthinned curves: the stripped evaluation answers exactly from them.
    for (full, stripped) in evaluation.per_concept.iter().zip(&stripped.per_concept) {
        for threshold in [0.0, 0.05, 0.1, 0.15, 0.3, 0.35, 0.5, 0.6, 0.75, 0.8, 0.95, 1.0] {
            assert_eq!(full.counts_at(threshold), stripped.counts_at(threshold), "threshold {threshold}");
        }
    }
}

/// xorshift64*: deterministic random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Random multi-label predictions whose scores are multiples of 1/`levels`, so that there are
/// many ties, with labels correlated to the scores and some unknown.
fn random_predictions(rng: &mut Rng, inputs: usize, concepts: usize, levels: u64) -> Predictions {
    let mut probabilities = Vec::new();
    let (mut labels, mut known) = (Vec::new(), Vec::new());
    for _ in 0..inputs * concepts {
        let level = rng.below(levels + 1);
        probabilities.push(level as f32 / levels as f32);
        labels.push(f32::from(u8::from(rng.below(levels + 1) < level)));
        known.push(rng.below(10) != 0);
    }
    Predictions {
        concepts: (0..concepts).map(|c| format!("c{c}")).collect(),
        input_ids: (0..inputs).map(|i| format!("i{i}")).collect(),
        probabilities,
        labels,
        label_known: Some(known),
        mutually_exclusive: false,
    }
}

#[test]
fn random_predictions_match_brute_force_definitions() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for (inputs, concepts, levels) in [(40, 3, 5), (300, 4, 20), (700, 2, 1000)] {
        let p = random_predictions(&mut rng, inputs, concepts, levels);
        let threshold = 0.5;
        let evaluation = evaluate(&p, threshold);
        for (c, metrics) in evaluation.per_concept.iter().enumerate() {
            let pairs: Vec<(f32, bool)> = (0..inputs)
                .filter(|&i| p.label_known.as_ref().unwrap()[i * concepts + c])
                .map(|i| (p.probabilities[i * concepts + c], p.labels[i * concepts + c] == 1.0))
                .collect();
            let positives: Vec<f32> = pairs.iter().filter(|x| x.1).map(|x| x.0).collect();
            let negatives: Vec<f32> = pairs.iter().filter(|x| !x.1).map(|x| x.0).collect();
            // Mann–Whitney U over all pairs, ties counting ½.
            let mut u = 0.0f64;
            for &sp in &positives {
                for &sn in &negatives {
                    u += if sp > sn {
                        1.0
                    } else if sp == sn {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
            let auc = u / (positives.len() * negatives.len()) as f64;
            assert!((metrics.roc_auc.unwrap() as f64 - auc).abs() < 1e-6, "AUC {:?} != {auc}", metrics.roc_auc);

            // AP from its definition: at each distinct score t (descending), recall and precision
            // of "score ≥ t" by counting.
            let mut thresholds: Vec<f32> = pairs.iter().map(|x| x.0).collect();
            thresholds.sort_by(|a, b| b.total_cmp(a));
            thresholds.dedup();
            let count = |t: f32, positive: bool| pairs.iter().filter(|x| x.1 == positive && x.0 >= t).count();
            let (mut ap, mut previous_recall) = (0.0f64, 0.0f64);
            for &t in &thresholds {
                let (tp, fp) = (count(t, true), count(t, false));
                let recall = tp as f64 / positives.len() as f64;
                ap += (recall - previous_recall) * tp as f64 / (tp + fp) as f64;
                previous_recall = recall;
            }
            assert!((metrics.average_precision.unwrap() as f64 - ap).abs() < 1e-6);

            // Counts at arbitrary thresholds, exact and from the curve once scores are stripped.
            let mut stripped = metrics.clone();
            stripped.scores = ConceptScores::default();
            for t in [0.0, 0.123, 0.5, 0.51, 0.999, 1.0] {
                let counts = metrics.counts_at(t);
                assert_eq!((counts.true_positives, counts.false_positives), (count(t, true), count(t, false)));
                if thresholds.len() < MAX_CURVE_POINTS {
                    assert_eq!(stripped.counts_at(t), counts);
                }
            }
            assert_eq!(metrics.counts, metrics.counts_at(threshold));

            // Curves: thinned, ends kept, monotone.
            let full = metrics.full_pr_curve();
            assert_eq!(full.len(), thresholds.len() + 1);
            for curve_len in [metrics.pr_curve.len(), metrics.roc_curve.len()] {
                assert!(curve_len <= MAX_CURVE_POINTS);
            }
            assert_eq!(metrics.pr_curve.first(), full.first());
            assert_eq!(metrics.pr_curve.last(), full.last());
            assert!(metrics.pr_curve.windows(2).all(|w| w[0].threshold > w[1].threshold));
            assert!(metrics.roc_curve.windows(2).all(|w| w[0].fpr <= w[1].fpr && w[0].tpr <= w[1].tpr));
            let (first, last) = (metrics.roc_curve[0], *metrics.roc_curve.last().unwrap());
            assert_eq!((first.fpr, first.tpr, last.fpr, last.tpr), (0.0, 0.0, 1.0, 1.0));
            // The best-F1 threshold of the full curve is the best over all distinct thresholds.
            let f1_at = |t: f32| metrics.precision_recall_at(t).2;
            let best = thresholds.iter().map(|&t| f1_at(t)).fold(0.0f32, f32::max);
            assert_eq!(f1_at(best_f1_threshold(&full)), best);
        }

        // Top-k by brute force: sort each input's known concepts (score desc, index asc).
        let known = p.label_known.as_ref().unwrap();
        let (mut top1, mut labeled) = (0, 0);
        for i in 0..inputs {
            let mut order: Vec<usize> = (0..concepts).filter(|&c| known[i * concepts + c]).collect();
            order.sort_by(|&a, &b| p.probabilities[i * concepts + b].total_cmp(&p.probabilities[i * concepts + a]));
            let positive = |c: usize| p.labels[i * concepts + c] == 1.0;
            if order.iter().any(|&c| positive(c)) {
                labeled += 1;
                top1 += usize::from(positive(order[0]));
            }
        }
        assert_eq!(evaluation.summary.labeled_inputs, labeled);
        assert_close(evaluation.summary.top1_accuracy.unwrap(), top1 as f32 / labeled as f32);
    }
}

#[test]
fn random_mutually_exclusive_confusion_matrix() {
    let mut rng = Rng(42);
    let (inputs, concepts) = (500, 7);
    let mut probabilities = Vec::new();
    let mut labels = vec![0.0; inputs * concepts];
    for i in 0..inputs {
        let raw: Vec<f32> = (0..concepts).map(|_| rng.below(1000) as f32 + 1.0).collect();
        let sum: f32 = raw.iter().sum();
        probabilities.extend(raw.iter().map(|r| r / sum));
        labels[i * concepts + rng.below(concepts as u64) as usize] = 1.0;
    }
    let p = Predictions {
        concepts: (0..concepts).map(|c| format!("c{c}")).collect(),
        input_ids: (0..inputs).map(|i| format!("i{i}")).collect(),
        probabilities,
        labels,
        label_known: None,
        mutually_exclusive: true,
    };
    let evaluation = evaluate(&p, 0.3);
    let matrix = &evaluation.confusion_matrix;
    assert_eq!(matrix.counts.iter().flatten().sum::<usize>(), inputs);
    let diagonal: usize = (0..concepts).map(|c| matrix.counts[c][c]).sum();
    assert_close(evaluation.summary.top1_accuracy.unwrap(), diagonal as f32 / inputs as f32);
    for t in 0..concepts {
        assert_eq!(matrix.counts[t].iter().sum::<usize>(), matrix.row_inputs[t]);
        // Softmax rows sum to 1, so do their means.
        let row_sum: f32 = matrix.mean_probabilities[t].iter().map(|m| m.unwrap()).sum();
        assert!((row_sum - 1.0).abs() < 1e-4);
        for pr in 0..concepts {
            let ids = evaluation.inputs_in_cell(t, pr);
            assert_eq!(ids.len(), matrix.counts[t][pr]);
            for id in ids {
                let input = &evaluation.per_input[id[1..].parse::<usize>().unwrap()];
                assert_eq!(input.true_concepts, [format!("c{t}")]);
                assert_eq!(input.top_concepts[0].concept, format!("c{pr}"));
            }
        }
        let binary = matrix.binary[t];
        assert_eq!(binary.true_positives, matrix.counts[t][t]);
        assert_eq!(binary.false_negatives, matrix.row_inputs[t] - matrix.counts[t][t]);
        assert_eq!(
            binary.true_positives + binary.false_positives,
            (0..concepts).map(|r| matrix.counts[r][t]).sum::<usize>()
        );
    }
    let rank_hits = evaluation.per_input.iter().filter(|i| i.true_concept_rank.unwrap() < 5).count();
    assert_close(evaluation.summary.top5_accuracy.unwrap(), rank_hits as f32 / inputs as f32);
    assert!(evaluation.per_input.iter().all(|i| i.top_concepts.len() == 5));
}
