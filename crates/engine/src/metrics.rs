//! Evaluation metrics of a classifier on a labelled evaluation set, as the API stores and serves
//! them and the portal draws them (shaped after Clarifai's evaluation results).
//!
//! Conventions, used everywhere in this module:
//! - An input is predicted positive for a concept when its score is **≥ the threshold** (as the
//!   thresholds of scikit-learn's curves), so a threshold equal to a score includes that score.
//! - A ratio whose denominator is 0 is **0** (precision with nothing predicted, recall of a concept
//!   without positives, F1 when precision and recall are both 0), as scikit-learn's
//!   `zero_division=0`, so stored metrics are always numbers, never NaN (JSON has no NaN).
//! - An (input, concept) pair whose label is unknown (`label_known` false) is neither a positive
//!   nor a negative: it takes no part in that concept's counts, curves and scores, nor in the
//!   input's top-k ranking; its probability still shows in the input's predictions and in the mean
//!   probabilities of the confusion matrix.
//! - Equal scores are tied: curves, ROC AUC and average precision treat a tie group as one step
//!   (exact values, independent of input order). Rankings of concepts within one input (top-k,
//!   argmax) break ties by concept order, the first concept first, so results are deterministic.
//! - Metrics are computed in f64 and stored as f32.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The most points kept per stored curve: enough to draw it smoothly, small enough to store an
/// evaluation with many concepts. The first and last points are always kept.
pub const MAX_CURVE_POINTS: usize = 200;

/// How many of an input's highest-scoring concepts [`InputResult::top_concepts`] keeps; also the
/// `k` of the summary's top-5 accuracy.
pub const TOP_CONCEPTS: usize = 5;

/// A model's predictions on an evaluation set with the ground truth, the input of [`evaluate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Predictions {
    /// Concept names, the columns of the matrices below.
    pub concepts: Vec<String>,
    /// Input ids, the rows of the matrices below.
    pub input_ids: Vec<String>,
    /// inputs × concepts, row-major: softmax outputs when `mutually_exclusive`, independent
    /// sigmoid outputs otherwise.
    pub probabilities: Vec<f32>,
    /// inputs × concepts, row-major: 1 for a positive, 0 for a negative.
    pub labels: Vec<f32>,
    /// inputs × concepts, row-major: whether the label is known. `None`: all are known.
    pub label_known: Option<Vec<bool>>,
    /// One concept per input (single-label classification): each input has at most one positive,
    /// its class. An input without a known positive takes no part in the accuracies and the
    /// confusion matrix rows, but still counts as a negative for every concept.
    pub mutually_exclusive: bool,
}

/// Why [`Predictions`] cannot be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PredictionsError {
    #[error("{field} has {actual} values, expected {expected} (inputs × concepts)")]
    Shape { field: &'static str, actual: usize, expected: usize },
    #[error("probability of input {input} for concept {concept} is not finite: {value}")]
    NotFinite { input: usize, concept: usize, value: f32 },
    #[error("label of input {input} for concept {concept} is {value}; labels are 0 or 1")]
    Label { input: usize, concept: usize, value: f32 },
    #[error("input {input} has {positives} positive concepts, but the concepts are mutually exclusive")]
    SeveralPositives { input: usize, positives: usize },
}

impl Predictions {
    pub fn inputs(&self) -> usize {
        self.input_ids.len()
    }

    /// Checks shapes, that probabilities are finite, that known labels are 0 or 1, and (when
    /// mutually exclusive) that no input has several positives.
    pub fn validate(&self) -> Result<(), PredictionsError> {
        let expected = self.inputs() * self.concepts.len();
        let check = |field, actual| match actual == expected {
            true => Ok(()),
            false => Err(PredictionsError::Shape { field, actual, expected }),
        };
        check("probabilities", self.probabilities.len())?;
        check("labels", self.labels.len())?;
        if let Some(known) = &self.label_known {
            check("label_known", known.len())?;
        }
        for input in 0..self.inputs() {
            let mut positives = 0;
            for concept in 0..self.concepts.len() {
                let value = self.probabilities[self.index(input, concept)];
                if !value.is_finite() {
                    return Err(PredictionsError::NotFinite { input, concept, value });
                }
                let label = self.labels[self.index(input, concept)];
                if self.known(input, concept) {
                    if label != 0.0 && label != 1.0 {
                        return Err(PredictionsError::Label { input, concept, value: label });
                    }
                    positives += usize::from(label == 1.0);
                }
            }
            if self.mutually_exclusive && positives > 1 {
                return Err(PredictionsError::SeveralPositives { input, positives });
            }
        }
        Ok(())
    }

    fn index(&self, input: usize, concept: usize) -> usize {
        input * self.concepts.len() + concept
    }

    fn row(&self, input: usize) -> &[f32] {
        let concepts = self.concepts.len();
        &self.probabilities[input * concepts..(input + 1) * concepts]
    }

    fn known(&self, input: usize, concept: usize) -> bool {
        self.label_known.as_ref().is_none_or(|known| known[self.index(input, concept)])
    }

    fn positive(&self, input: usize, concept: usize) -> bool {
        self.known(input, concept) && self.labels[self.index(input, concept)] == 1.0
    }

    /// How many concepts with known labels rank above the input's best-ranked known positive
    /// (see [`ranking`]); `None` without a known positive.
    fn rank_of_best_positive(&self, input: usize) -> Option<usize> {
        let row = self.row(input);
        let concepts = 0..self.concepts.len();
        let best = concepts.clone().filter(|&c| self.positive(input, c)).min_by(|&a, &b| ranking(row, a, b))?;
        Some(concepts.filter(|&c| self.known(input, c) && ranking(row, c, best).is_lt()).count())
    }
}

/// The order of concepts within one input: higher score first, then the first concept first.
fn ranking(row: &[f32], a: usize, b: usize) -> Ordering {
    row[b].partial_cmp(&row[a]).unwrap_or(Ordering::Equal).then(a.cmp(&b))
}

/// The one definition of "predicted positive" (see the module's conventions). A NaN threshold
/// predicts nothing.
fn predicted_positive(score: f32, threshold: f32) -> bool {
    score >= threshold
}

/// `numerator / denominator`, 0 when the denominator is 0 (see the module's conventions).
fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator == 0.0 { 0.0 } else { numerator / denominator }
}

/// The harmonic mean of precision and recall, 0 when both are 0.
fn f1(precision: f64, recall: f64) -> f64 {
    ratio(2.0 * precision * recall, precision + recall)
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, count) = values.fold((0.0, 0usize), |(sum, count), v| (sum + v, count + 1));
    (count > 0).then(|| sum / count as f64)
}

/// Everything computed from a model's predictions on an evaluation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Concept names; `*_index` fields and matrix rows/columns index this list.
    pub concepts: Vec<String>,
    pub summary: Summary,
    /// One entry per concept, in the order of `concepts`.
    pub per_concept: Vec<ConceptMetrics>,
    pub confusion_matrix: ConfusionMatrix,
    /// One entry per input, in the order of the predictions' `input_ids`; the confusion matrix's
    /// cells hold indices into this list.
    pub per_input: Vec<InputResult>,
}

impl Evaluation {
    pub fn concept_index(&self, concept: &str) -> Option<usize> {
        self.concepts.iter().position(|c| c == concept)
    }

    /// The ids of the inputs in one confusion-matrix cell (true concept row, predicted concept
    /// column), for drilling down from the matrix to the images.
    pub fn inputs_in_cell(&self, true_index: usize, predicted_index: usize) -> Vec<&str> {
        let inputs = self.confusion_matrix.cell_inputs(true_index, predicted_index);
        inputs.iter().map(|&input| self.per_input[input].input_id.as_str()).collect()
    }

    /// Drops every concept's sorted scores, the one part whose size grows with inputs × concepts,
    /// for storing or serving a compact evaluation. [`ConceptMetrics::precision_recall_at`] then
    /// answers from the (thinned) precision-recall curve instead of exactly.
    pub fn strip_scores(&mut self) {
        for concept in &mut self.per_concept {
            concept.scores = ConceptScores::default();
        }
    }
}

/// Metrics over the whole evaluation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub inputs: usize,
    pub concepts: usize,
    pub mutually_exclusive: bool,
    /// The threshold of every "at the threshold" metric.
    pub threshold: f32,
    /// Inputs with at least one known positive: those the accuracies are over.
    pub labeled_inputs: usize,
    /// Share of labelled inputs whose highest-ranked concept (among those with known labels) is
    /// one of their positives. For mutually exclusive concepts this is the usual accuracy.
    /// `None` without labelled inputs.
    pub top1_accuracy: Option<f32>,
    /// Share of labelled inputs with a positive among their 5 highest-ranked concepts (with known
    /// labels); 1 when there are at most 5 concepts.
    pub top5_accuracy: Option<f32>,
    /// Mean ROC AUC over the concepts that have both positives and negatives (`roc_auc_concepts`
    /// of them); `None` when none has.
    pub macro_roc_auc: Option<f32>,
    pub roc_auc_concepts: usize,
    /// Mean over the concepts that have positives (`concepts_with_positives` of them) of the
    /// concept's average precision, precision, recall and F1. Concepts without positives are left
    /// out (their recall and average precision are undefined); their false positives still count
    /// in the micro precision. Macro F1 is the mean of the concepts' F1, not the F1 of macro
    /// precision and recall (as scikit-learn).
    pub macro_average_precision: Option<f32>,
    pub macro_precision: Option<f32>,
    pub macro_recall: Option<f32>,
    pub macro_f1: Option<f32>,
    pub concepts_with_positives: usize,
    /// Precision, recall and F1 of the true/false positive and false negative counts summed over
    /// all concepts.
    pub micro_precision: f32,
    pub micro_recall: f32,
    pub micro_f1: f32,
    /// ROC AUC and average precision of all known (input, concept) pairs pooled as one binary
    /// problem (scikit-learn's `average="micro"`); `None` without positives (and, for the AUC,
    /// negatives).
    pub micro_roc_auc: Option<f32>,
    pub micro_average_precision: Option<f32>,
}

/// True/false positive/negative counts of one concept: a 2×2 confusion matrix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryCounts {
    pub true_positives: usize,
    pub false_positives: usize,
    pub true_negatives: usize,
    pub false_negatives: usize,
}

impl BinaryCounts {
    /// tp / (tp + fp); 0 when nothing is predicted positive.
    pub fn precision(&self) -> f32 {
        self.precision_f64() as f32
    }

    /// tp / (tp + fn); 0 when there are no positives.
    pub fn recall(&self) -> f32 {
        self.recall_f64() as f32
    }

    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub fn f1(&self) -> f32 {
        f1(self.precision_f64(), self.recall_f64()) as f32
    }

    fn precision_f64(&self) -> f64 {
        ratio(self.true_positives as f64, (self.true_positives + self.false_positives) as f64)
    }

    fn recall_f64(&self) -> f64 {
        ratio(self.true_positives as f64, (self.true_positives + self.false_negatives) as f64)
    }
}

/// A point of a ROC curve: the rates when predicting positive every score ≥ `threshold`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RocPoint {
    pub threshold: f32,
    pub fpr: f32,
    pub tpr: f32,
}

/// A point of a precision-recall curve: predicting positive every score ≥ `threshold`. The
/// counts make the point exact to recompute from (and F1 available) without the scores.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrPoint {
    pub threshold: f32,
    pub precision: f32,
    pub recall: f32,
    pub true_positives: usize,
    pub false_positives: usize,
}

impl PrPoint {
    pub fn f1(&self) -> f32 {
        f1(self.precision as f64, self.recall as f64) as f32
    }

    /// The curve's first point, which predicts nothing.
    fn predicts_nothing(&self) -> bool {
        self.true_positives + self.false_positives == 0
    }
}

/// A concept's scores on its known positives and known negatives, each sorted ascending (−0 is
/// stored as 0): all that precision and recall at any threshold need, exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConceptScores {
    pub positives: Vec<f32>,
    pub negatives: Vec<f32>,
}

impl ConceptScores {
    pub fn new(mut positives: Vec<f32>, mut negatives: Vec<f32>) -> ConceptScores {
        for scores in [&mut positives, &mut negatives] {
            // Adding 0 turns −0 into 0, so that the total order below ties them as `==` does.
            scores.iter_mut().for_each(|s| *s += 0.0);
            scores.sort_by(f32::total_cmp);
        }
        ConceptScores { positives, negatives }
    }

    pub fn is_empty(&self) -> bool {
        self.positives.is_empty() && self.negatives.is_empty()
    }

    pub fn counts_at(&self, threshold: f32) -> BinaryCounts {
        let at_or_above =
            |scores: &[f32]| scores.len() - scores.partition_point(|&s| !predicted_positive(s, threshold));
        let true_positives = at_or_above(&self.positives);
        let false_positives = at_or_above(&self.negatives);
        BinaryCounts {
            true_positives,
            false_positives,
            true_negatives: self.negatives.len() - false_positives,
            false_negatives: self.positives.len() - true_positives,
        }
    }

    /// A threshold just above every score (and above 1, the largest probability), where the
    /// curves start by predicting nothing. Finite, unlike scikit-learn's `inf`, so it fits JSON.
    fn start_threshold(&self) -> f32 {
        let highest =
            [self.positives.last(), self.negatives.last()].into_iter().flatten().fold(1.0f32, |a, &b| a.max(b));
        highest.next_up()
    }

    /// The cumulative counts at each distinct score, highest first: the unthinned curve.
    fn operating_points(&self) -> Vec<OperatingPoint> {
        let (positives, negatives) = (&self.positives, &self.negatives);
        let (mut p, mut n) = (positives.len(), negatives.len());
        let mut point = OperatingPoint { threshold: 0.0, true_positives: 0, false_positives: 0 };
        let mut points = Vec::new();
        while p > 0 || n > 0 {
            point.threshold = match (p, n) {
                (0, _) => negatives[n - 1],
                (_, 0) => positives[p - 1],
                _ => std::cmp::max_by(positives[p - 1], negatives[n - 1], f32::total_cmp),
            };
            while p > 0 && positives[p - 1].total_cmp(&point.threshold).is_eq() {
                p -= 1;
                point.true_positives += 1;
            }
            while n > 0 && negatives[n - 1].total_cmp(&point.threshold).is_eq() {
                n -= 1;
                point.false_positives += 1;
            }
            points.push(point);
        }
        points
    }
}

#[derive(Debug, Clone, Copy)]
struct OperatingPoint {
    threshold: f32,
    true_positives: usize,
    false_positives: usize,
}

/// The exact area under the ROC curve, by the trapezoid rule over tie groups: a tie group is a
/// diagonal step, so a positive tied with a negative counts ½ — the Mann–Whitney U statistic over
/// positives × negatives. `None` without positives or without negatives.
fn roc_auc(points: &[OperatingPoint], positives: usize, negatives: usize) -> Option<f64> {
    if positives == 0 || negatives == 0 {
        return None;
    }
    let (mut area, mut previous) = (0.0, (0, 0));
    for point in points {
        let width = (point.false_positives - previous.1) as f64;
        area += width * (point.true_positives + previous.0) as f64 / 2.0;
        previous = (point.true_positives, point.false_positives);
    }
    Some(area / (positives as f64 * negatives as f64))
}

/// scikit-learn's average precision, Σₙ (Rₙ − Rₙ₋₁) Pₙ over the distinct thresholds (no
/// interpolation). `None` without positives.
fn average_precision(points: &[OperatingPoint], positives: usize) -> Option<f64> {
    if positives == 0 {
        return None;
    }
    let (mut sum, mut previous_tp) = (0.0, 0);
    for point in points {
        let precision = point.true_positives as f64 / (point.true_positives + point.false_positives) as f64;
        sum += (point.true_positives - previous_tp) as f64 * precision;
        previous_tp = point.true_positives;
    }
    Some(sum / positives as f64)
}

/// Evenly spaced points (by index) when there are more than `max`, always keeping both ends.
fn thin<T: Copy>(points: Vec<T>, max: usize) -> Vec<T> {
    if points.len() <= max || max < 2 {
        return points;
    }
    let last = points.len() - 1;
    (0..max).map(|k| points[(k * last + (max - 1) / 2) / (max - 1)]).collect()
}

/// The ROC curve from (0, 0) to (1, 1) with the points in the middle of straight segments
/// dropped (scikit-learn's `drop_intermediate`, which leaves the drawn curve and its area
/// unchanged), then thinned.
fn roc_curve(points: &[OperatingPoint], start_threshold: f32, positives: usize, negatives: usize) -> Vec<RocPoint> {
    let start = OperatingPoint { threshold: start_threshold, true_positives: 0, false_positives: 0 };
    let all: Vec<OperatingPoint> = std::iter::once(start).chain(points.iter().copied()).collect();
    let mut corners: Vec<OperatingPoint> = Vec::with_capacity(all.len());
    for (i, &point) in all.iter().enumerate() {
        if let (Some(kept), Some(next)) = (corners.last(), all.get(i + 1)) {
            let (dx1, dy1) = (point.false_positives - kept.false_positives, point.true_positives - kept.true_positives);
            let (dx2, dy2) = (next.false_positives - point.false_positives, next.true_positives - point.true_positives);
            if dx1 * dy2 == dy1 * dx2 {
                continue;
            }
        }
        corners.push(point);
    }
    let rates = corners.into_iter().map(|point| RocPoint {
        threshold: point.threshold,
        fpr: ratio(point.false_positives as f64, negatives as f64) as f32,
        tpr: ratio(point.true_positives as f64, positives as f64) as f32,
    });
    thin(rates.collect(), MAX_CURVE_POINTS)
}

/// The precision-recall curve from the point that predicts nothing (recall 0, precision 1 by
/// scikit-learn's convention, so the drawn curve starts at the top left) to the lowest score
/// (recall 1 when there are positives), one point per distinct score.
fn pr_points(points: &[OperatingPoint], start_threshold: f32, positives: usize) -> Vec<PrPoint> {
    let start =
        PrPoint { threshold: start_threshold, precision: 1.0, recall: 0.0, true_positives: 0, false_positives: 0 };
    let rest = points.iter().map(|point| {
        let predicted = (point.true_positives + point.false_positives) as f64;
        PrPoint {
            threshold: point.threshold,
            precision: ratio(point.true_positives as f64, predicted) as f32,
            recall: ratio(point.true_positives as f64, positives as f64) as f32,
            true_positives: point.true_positives,
            false_positives: point.false_positives,
        }
    });
    std::iter::once(start).chain(rest).collect()
}

/// Metrics of one concept as a binary problem: its known positives against its known negatives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConceptMetrics {
    pub concept: String,
    /// Inputs labelled positive / negative (known labels only).
    pub positives: usize,
    pub negatives: usize,
    /// At the evaluation's threshold.
    pub counts: BinaryCounts,
    pub precision: f32,
    pub recall: f32,
    pub f1: f32,
    /// `None` without positives or without negatives.
    pub roc_auc: Option<f32>,
    /// `None` without positives.
    pub average_precision: Option<f32>,
    /// Highest threshold first, thinned to at most [`MAX_CURVE_POINTS`].
    pub roc_curve: Vec<RocPoint>,
    /// Highest threshold first (recall increasing), thinned to at most [`MAX_CURVE_POINTS`].
    pub pr_curve: Vec<PrPoint>,
    /// Empty after [`Evaluation::strip_scores`].
    #[serde(default, skip_serializing_if = "ConceptScores::is_empty")]
    pub scores: ConceptScores,
}

impl ConceptMetrics {
    /// All metrics of a concept from its scores, at `threshold`.
    pub fn from_scores(concept: String, scores: ConceptScores, threshold: f32) -> ConceptMetrics {
        let (positives, negatives) = (scores.positives.len(), scores.negatives.len());
        let points = scores.operating_points();
        let start = scores.start_threshold();
        let counts = scores.counts_at(threshold);
        ConceptMetrics {
            concept,
            positives,
            negatives,
            counts,
            precision: counts.precision(),
            recall: counts.recall(),
            f1: counts.f1(),
            roc_auc: roc_auc(&points, positives, negatives).map(|v| v as f32),
            average_precision: average_precision(&points, positives).map(|v| v as f32),
            roc_curve: roc_curve(&points, start, positives, negatives),
            pr_curve: thin(pr_points(&points, start, positives), MAX_CURVE_POINTS),
            scores,
        }
    }

    /// The counts when predicting positive every score ≥ `threshold`: exact from the scores, or,
    /// once they are stripped, those of the curve's point with the lowest threshold ≥ `threshold`
    /// (exact when the thinning kept the point of the next score at or above `threshold`).
    pub fn counts_at(&self, threshold: f32) -> BinaryCounts {
        if !self.scores.is_empty() || self.positives + self.negatives == 0 {
            return self.scores.counts_at(threshold);
        }
        let point = self.pr_curve.iter().rev().find(|p| predicted_positive(p.threshold, threshold));
        let (true_positives, false_positives) = point.map_or((0, 0), |p| (p.true_positives, p.false_positives));
        BinaryCounts {
            true_positives,
            false_positives,
            true_negatives: self.negatives - false_positives,
            false_negatives: self.positives - true_positives,
        }
    }

    /// (precision, recall, F1) at any threshold, for a threshold slider; see [`Self::counts_at`].
    pub fn precision_recall_at(&self, threshold: f32) -> (f32, f32, f32) {
        let counts = self.counts_at(threshold);
        (counts.precision(), counts.recall(), counts.f1())
    }

    /// The precision-recall curve with one point per distinct score, not thinned (the stored
    /// curve once the scores are stripped), for exact threshold selection.
    pub fn full_pr_curve(&self) -> Vec<PrPoint> {
        if self.scores.is_empty() {
            return self.pr_curve.clone();
        }
        pr_points(&self.scores.operating_points(), self.scores.start_threshold(), self.positives)
    }
}

/// The threshold of the curve point with the highest F1 (the highest such threshold on ties);
/// the curve's first threshold, which predicts nothing, when no point has a positive F1 (and
/// `f32::INFINITY`, which predicts nothing too, for an empty curve). Pass
/// [`ConceptMetrics::full_pr_curve`] for the exact optimum, the stored curve for one among its
/// (thinned) points.
pub fn best_f1_threshold(curve: &[PrPoint]) -> f32 {
    let mut best: Option<&PrPoint> = None;
    for point in curve {
        if best.is_none_or(|b| point.f1() > b.f1()) {
            best = Some(point);
        }
    }
    best.map_or(f32::INFINITY, |p| p.threshold)
}

/// The lowest threshold (so the highest recall) whose precision is ≥ `target`; `None` when no
/// point that predicts anything reaches it.
pub fn threshold_for_precision(curve: &[PrPoint], target: f32) -> Option<f32> {
    curve.iter().rev().find(|p| !p.predicts_nothing() && p.precision >= target).map(|p| p.threshold)
}

/// The highest threshold (so the fewest predictions) whose recall is ≥ `target`; `None` when no
/// point that predicts anything reaches it.
pub fn threshold_for_recall(curve: &[PrPoint], target: f32) -> Option<f32> {
    curve.iter().find(|p| !p.predicts_nothing() && p.recall >= target).map(|p| p.threshold)
}

/// How the confusion matrix's columns (predicted concepts) are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictedBy {
    /// Mutually exclusive concepts: each input's highest-scoring concept (the first on ties).
    Argmax,
    /// Multi-label: every concept whose score is ≥ the threshold (none, one or several).
    Threshold,
}

/// Rows are true concepts, columns predicted concepts. For mutually exclusive concepts each
/// input with a known positive falls in exactly one cell (its class, its argmax). For multi-label
/// concepts, an input counts once in every (positive concept, concept predicted at the threshold)
/// cell: a co-occurrence matrix whose diagonal is the concepts' true positives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    pub predicted_by: PredictedBy,
    /// concepts × concepts.
    pub counts: Vec<Vec<usize>>,
    /// concepts × concepts: the mean probability of the column concept over the inputs of the row
    /// concept (Clarifai's "mean probabilities"); a row without inputs is all `None`.
    pub mean_probabilities: Vec<Vec<Option<f32>>>,
    /// Per true concept: the inputs of the row (its known positives).
    pub row_inputs: Vec<usize>,
    /// Per true concept: inputs of the row with no concept predicted (multi-label only; 0 for
    /// argmax, which always predicts one).
    pub unpredicted: Vec<usize>,
    /// Per concept, one-vs-rest over its known labels with the predictions of this matrix
    /// (argmax or threshold), so for multi-label the same counts as [`ConceptMetrics::counts`].
    pub binary: Vec<BinaryCounts>,
    /// The non-empty cells with their inputs, sorted by (true, predicted) index.
    pub cells: Vec<ConfusionCell>,
}

/// The inputs of one confusion-matrix cell, for drilling down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfusionCell {
    pub true_index: usize,
    pub predicted_index: usize,
    /// Indices into [`Evaluation::per_input`], ascending.
    pub inputs: Vec<usize>,
}

impl ConfusionMatrix {
    /// Indices into [`Evaluation::per_input`] of the inputs in a cell (empty for an empty cell).
    pub fn cell_inputs(&self, true_index: usize, predicted_index: usize) -> &[usize] {
        let cell =
            self.cells.binary_search_by(|c| (c.true_index, c.predicted_index).cmp(&(true_index, predicted_index)));
        cell.map_or(&[], |i| &self.cells[i].inputs)
    }
}

/// One input's predictions against its labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InputResult {
    pub input_id: String,
    /// Its [`TOP_CONCEPTS`] highest-scoring concepts (all concepts, known labels or not), best first.
    pub top_concepts: Vec<ConceptScore>,
    /// Its known positive concepts.
    pub true_concepts: Vec<String>,
    /// How many concepts with known labels rank above its best-ranked positive (0: the top
    /// concept is correct); `None` without a known positive. Top-k correct ⇔ rank < k.
    pub true_concept_rank: Option<usize>,
    /// `true_concept_rank == Some(0)`; `None` without a known positive.
    pub top1_correct: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConceptScore {
    pub concept: String,
    pub probability: f32,
}

/// Evaluates predictions: per-concept metrics and curves at `threshold` (and over all
/// thresholds), the confusion matrix, per-input results, and their summary.
///
/// # Panics
/// When `predictions.validate()` fails; call it first for predictions from outside.
pub fn evaluate(predictions: &Predictions, threshold: f32) -> Evaluation {
    if let Err(error) = predictions.validate() {
        panic!("cannot evaluate predictions: {error}");
    }
    let per_concept: Vec<ConceptMetrics> =
        (0..predictions.concepts.len()).map(|concept| concept_metrics(predictions, concept, threshold)).collect();
    let per_input: Vec<InputResult> = (0..predictions.inputs()).map(|input| input_result(predictions, input)).collect();
    Evaluation {
        concepts: predictions.concepts.clone(),
        summary: summary(predictions, threshold, &per_concept, &per_input),
        confusion_matrix: confusion_matrix(predictions, threshold),
        per_concept,
        per_input,
    }
}

fn concept_metrics(predictions: &Predictions, concept: usize, threshold: f32) -> ConceptMetrics {
    let (mut positives, mut negatives) = (Vec::new(), Vec::new());
    for input in (0..predictions.inputs()).filter(|&input| predictions.known(input, concept)) {
        let score = predictions.probabilities[predictions.index(input, concept)];
        match predictions.positive(input, concept) {
            true => positives.push(score),
            false => negatives.push(score),
        }
    }
    let name = predictions.concepts[concept].clone();
    ConceptMetrics::from_scores(name, ConceptScores::new(positives, negatives), threshold)
}

fn input_result(predictions: &Predictions, input: usize) -> InputResult {
    let row = predictions.row(input);
    let mut order: Vec<usize> = (0..row.len()).collect();
    let top = TOP_CONCEPTS.min(row.len());
    if top < row.len() {
        order.select_nth_unstable_by(top, |&a, &b| ranking(row, a, b));
        order.truncate(top);
    }
    order.sort_by(|&a, &b| ranking(row, a, b));
    let concept_score = |c: usize| ConceptScore { concept: predictions.concepts[c].clone(), probability: row[c] };
    let true_concepts = (0..row.len()).filter(|&c| predictions.positive(input, c));
    let rank = predictions.rank_of_best_positive(input);
    InputResult {
        input_id: predictions.input_ids[input].clone(),
        top_concepts: order.into_iter().map(concept_score).collect(),
        true_concepts: true_concepts.map(|c| predictions.concepts[c].clone()).collect(),
        true_concept_rank: rank,
        top1_correct: rank.map(|r| r == 0),
    }
}

fn confusion_matrix(predictions: &Predictions, threshold: f32) -> ConfusionMatrix {
    let concepts = predictions.concepts.len();
    let mut counts = vec![vec![0; concepts]; concepts];
    let mut probability_sums = vec![vec![0.0f64; concepts]; concepts];
    let mut row_inputs = vec![0; concepts];
    let mut unpredicted = vec![0; concepts];
    let mut binary = vec![BinaryCounts::default(); concepts];
    let mut cells: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    let predicted_by = match predictions.mutually_exclusive {
        true => PredictedBy::Argmax,
        false => PredictedBy::Threshold,
    };
    for input in 0..predictions.inputs() {
        let row = predictions.row(input);
        let predicted: Vec<usize> = match predicted_by {
            PredictedBy::Argmax => (0..concepts).min_by(|&a, &b| ranking(row, a, b)).into_iter().collect(),
            PredictedBy::Threshold => (0..concepts).filter(|&c| predicted_positive(row[c], threshold)).collect(),
        };
        for (concept, counts) in binary.iter_mut().enumerate().filter(|&(c, _)| predictions.known(input, c)) {
            match (predictions.positive(input, concept), predicted.contains(&concept)) {
                (true, true) => counts.true_positives += 1,
                (true, false) => counts.false_negatives += 1,
                (false, true) => counts.false_positives += 1,
                (false, false) => counts.true_negatives += 1,
            }
        }
        for truth in (0..concepts).filter(|&c| predictions.positive(input, c)) {
            row_inputs[truth] += 1;
            unpredicted[truth] += usize::from(predicted.is_empty());
            for (sum, &probability) in probability_sums[truth].iter_mut().zip(row) {
                *sum += probability as f64;
            }
            for &column in &predicted {
                counts[truth][column] += 1;
                cells.entry((truth, column)).or_default().push(input);
            }
        }
    }
    let mean_probabilities = probability_sums
        .iter()
        .zip(&row_inputs)
        .map(|(sums, &n)| sums.iter().map(|&sum| (n > 0).then(|| (sum / n as f64) as f32)).collect())
        .collect();
    let cells = cells
        .into_iter()
        .map(|((true_index, predicted_index), inputs)| ConfusionCell { true_index, predicted_index, inputs })
        .collect();
    ConfusionMatrix { predicted_by, counts, mean_probabilities, row_inputs, unpredicted, binary, cells }
}

fn summary(
    predictions: &Predictions,
    threshold: f32,
    per_concept: &[ConceptMetrics],
    per_input: &[InputResult],
) -> Summary {
    let ranks: Vec<usize> = per_input.iter().filter_map(|input| input.true_concept_rank).collect();
    let accuracy = |k: usize| mean(ranks.iter().map(|&rank| f64::from(u8::from(rank < k)))).map(|v| v as f32);
    let with_positives: Vec<&ConceptMetrics> = per_concept.iter().filter(|c| c.positives > 0).collect();
    let macro_mean =
        |metric: fn(&ConceptMetrics) -> f32| mean(with_positives.iter().map(|&c| metric(c) as f64)).map(|v| v as f32);
    let aucs: Vec<f64> = per_concept.iter().filter_map(|c| c.roc_auc).map(f64::from).collect();
    let pooled = per_concept.iter().fold(BinaryCounts::default(), |sum, c| BinaryCounts {
        true_positives: sum.true_positives + c.counts.true_positives,
        false_positives: sum.false_positives + c.counts.false_positives,
        true_negatives: sum.true_negatives + c.counts.true_negatives,
        false_negatives: sum.false_negatives + c.counts.false_negatives,
    });
    let all_scores = ConceptScores::new(
        per_concept.iter().flat_map(|c| c.scores.positives.iter().copied()).collect(),
        per_concept.iter().flat_map(|c| c.scores.negatives.iter().copied()).collect(),
    );
    let all_points = all_scores.operating_points();
    let (positives, negatives) = (all_scores.positives.len(), all_scores.negatives.len());
    Summary {
        inputs: predictions.inputs(),
        concepts: predictions.concepts.len(),
        mutually_exclusive: predictions.mutually_exclusive,
        threshold,
        labeled_inputs: ranks.len(),
        top1_accuracy: accuracy(1),
        top5_accuracy: accuracy(TOP_CONCEPTS),
        macro_roc_auc: mean(aucs.iter().copied()).map(|v| v as f32),
        roc_auc_concepts: aucs.len(),
        macro_average_precision: macro_mean(|c| c.average_precision.unwrap_or(0.0)),
        macro_precision: macro_mean(|c| c.precision),
        macro_recall: macro_mean(|c| c.recall),
        macro_f1: macro_mean(|c| c.f1),
        concepts_with_positives: with_positives.len(),
        micro_precision: pooled.precision(),
        micro_recall: pooled.recall(),
        micro_f1: pooled.f1(),
        micro_roc_auc: roc_auc(&all_points, positives, negatives).map(|v| v as f32),
        micro_average_precision: average_precision(&all_points, positives).map(|v| v as f32),
    }
}
