//! The few statistics the report quotes, kept in one place so that the table,
//! the sentences and the charts can never disagree about a figure.
//! Percentiles use linear interpolation between the closest ranks (the
//! "type 7" method of R and NumPy's default): the p-th percentile of the n
//! sorted samples sits at rank `p * (n - 1)`, between its two neighbours. It
//! is defined for every n >= 1, and the median it gives is the usual one
//! (the mean of the middle two for even n). Every ratio is taken against
//! amphi's container isolation, the baseline a user is choosing against.

use super::model::{Series, Step, Subject, Unit};

/// The figures of one series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub p90: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

impl Summary {
    /// None for no samples, and for a non-finite sample: a figure computed
    /// from a broken measurement would look as trustworthy as any other.
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() || samples.iter().any(|s| !s.is_finite()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        Some(Summary {
            n: sorted.len(),
            median: percentile(&sorted, 0.5),
            p90: percentile(&sorted, 0.9),
            min: sorted[0],
            max: sorted[sorted.len() - 1],
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        })
    }
}

/// The `p`-th quantile (0..=1) of non-empty `sorted` samples, interpolated
/// linearly between the closest ranks.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = p.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (below, fraction) = (rank.floor() as usize, rank.fract());
    match sorted.get(below + 1) {
        Some(above) => sorted[below] + (above - sorted[below]) * fraction,
        None => sorted[below],
    }
}

/// `subject / baseline`; None where that means nothing (a zero or negative
/// baseline, a non-finite figure).
pub fn ratio(subject_median: f64, baseline_median: f64) -> Option<f64> {
    let r = subject_median / baseline_median;
    (baseline_median > 0.0 && r.is_finite()).then_some(r)
}

/// How many times worse than the baseline: the plain ratio where lower is
/// better, its inverse where higher is better, so that > 1 always means
/// "slower, or more costly, than container isolation".
pub fn worse_factor(unit: Unit, subject_median: f64, baseline_median: f64) -> Option<f64> {
    if unit.lower_is_better() {
        ratio(subject_median, baseline_median)
    } else {
        ratio(baseline_median, subject_median)
    }
}

/// The summary of a series that did not fail.
pub fn summary(series: &Series) -> Option<Summary> {
    match series.error {
        Some(_) => None,
        None => Summary::of(&series.samples),
    }
}

/// The summary of `subject`'s series in `step` at `x` (the instance count of
/// the density step, None elsewhere), if it exists and did not fail.
pub fn find(step: &Step, subject: Subject, x: Option<u32>) -> Option<Summary> {
    step.series.iter().find(|s| s.subject == subject && s.x == x).and_then(summary)
}

/// A series' median over the median of container isolation at the same x.
pub fn ratio_to_container(step: &Step, series: &Series) -> Option<f64> {
    let baseline = find(step, Subject::Container, series.x)?;
    ratio(summary(series)?.median, baseline.median)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::model::Group;

    #[test]
    fn summary_interpolates_between_ranks() {
        let s = Summary::of(&[40.0, 10.0, 30.0, 20.0]).unwrap();
        assert_eq!((s.n, s.min, s.max, s.mean), (4, 10.0, 40.0, 25.0));
        assert_eq!(s.median, 25.0);
        // rank 0.9 * 3 = 2.7: 30 + 0.7 * 10
        assert!((s.p90 - 37.0).abs() < 1e-9, "{}", s.p90);
    }

    #[test]
    fn summary_of_one_sample_is_that_sample() {
        let s = Summary::of(&[7.5]).unwrap();
        assert_eq!((s.median, s.p90, s.min, s.max, s.mean), (7.5, 7.5, 7.5, 7.5, 7.5));
    }

    #[test]
    fn no_summary_of_nothing_or_of_a_broken_sample() {
        assert_eq!(Summary::of(&[]), None);
        assert_eq!(Summary::of(&[1.0, f64::NAN]), None);
        assert_eq!(Summary::of(&[1.0, f64::INFINITY]), None);
    }

    #[test]
    fn ratios_and_their_direction() {
        assert_eq!(ratio(300.0, 100.0), Some(3.0));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(worse_factor(Unit::Milliseconds, 200.0, 100.0), Some(2.0));
        // Half the throughput is twice as bad.
        assert_eq!(worse_factor(Unit::MibPerSecond, 50.0, 100.0), Some(2.0));
    }

    #[test]
    fn density_ratios_match_the_instance_count() {
        let series = |subject, x, v: f64, error: Option<&str>| Series {
            subject,
            x: Some(x),
            samples: vec![v, v],
            error: error.map(str::to_string),
        };
        let step = Step {
            id: "density.pss_per_instance".into(),
            group: Group::Density,
            title: "memory per instance".into(),
            unit: Unit::Mib,
            series: vec![
                series(Subject::Container, 1, 2.0, None),
                series(Subject::Container, 10, 1.0, None),
                series(Subject::Vm, 1, 100.0, None),
                series(Subject::Vm, 10, 90.0, None),
                series(Subject::Runc, 10, 1.0, Some("boom")),
            ],
        };
        assert_eq!(ratio_to_container(&step, &step.series[2]), Some(50.0));
        assert_eq!(ratio_to_container(&step, &step.series[3]), Some(90.0));
        assert_eq!(ratio_to_container(&step, &step.series[4]), None);
    }
}
