//! What a person reads after `amphi bench`: the terminal table, a few plain
//! sentences for someone choosing an isolation, and a self-contained HTML
//! page with charts. All of them are computed from [`Results`] alone, so a
//! saved `--json` file gives back the same report later. The figures of a
//! row are built here once and shared, so the table and the page agree.

mod charts;
mod html;
mod summary;
mod table;

pub use html::html;
pub use summary::plain_summary;
pub use table::table;

use super::model::{Group, Results, Series, Step, Subject};
use super::stats::{self, Summary};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot draw a chart of the report")]
    Chart(#[from] plotters::drawing::DrawingAreaErrorKind<std::io::Error>),
}

/// The column headings of a row's figures, in the order of [`Row::figures`].
const FIGURES: [&str; 5] = ["median", "p90", "min–max", "n", "vs container"];

/// One line of the table: a subject in a step, at one x for the density step.
struct Row<'a> {
    step: &'a Step,
    series: &'a Series,
}

impl Row<'_> {
    fn name(&self) -> String {
        match self.series.x {
            Some(x) => format!("{} (N={x})", self.step.id),
            None => self.step.id.clone(),
        }
    }

    /// The figures in [`FIGURES`] order, or why there are none: a failed
    /// series must never show a number that could be taken for a result.
    fn figures(&self) -> Result<[String; 5], String> {
        if let Some(error) = &self.series.error {
            return Err(format!("failed: {}", error.replace('\n', " ")));
        }
        let s = stats::summary(self.series).ok_or("no valid samples")?;
        let unit = self.step.unit.symbol();
        let vs = match (self.series.subject, stats::ratio_to_container(self.step, self.series)) {
            (Subject::Container, _) => "baseline".to_string(),
            (_, Some(r)) => times(r),
            (_, None) => "–".to_string(),
        };
        Ok([
            format!("{} {unit}", number(s.median)),
            format!("{} {unit}", number(s.p90)),
            format!("{}–{} {unit}", number(s.min), number(s.max)),
            s.n.to_string(),
            vs,
        ])
    }
}

/// The rows of each group that has steps, in report order; the density
/// step's rows by instance count, so that one count's subjects sit together.
fn rows_by_group(results: &Results) -> Vec<(Group, Vec<Row<'_>>)> {
    let mut groups: Vec<Group> = results.steps.iter().map(|s| s.group).collect();
    groups.sort();
    groups.dedup();
    groups
        .into_iter()
        .map(|group| {
            let rows = results.steps.iter().filter(|s| s.group == group).flat_map(|step| {
                let mut series: Vec<&Series> = step.series.iter().collect();
                series.sort_by_key(|s| s.x);
                series.into_iter().map(move |series| Row { step, series })
            });
            (group, rows.collect())
        })
        .collect()
}

/// A figure with the digits that matter at its size.
fn number(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

/// A ratio as "3.1x"; two decimals near 1, where the difference is the news.
fn times(r: f64) -> String {
    match r {
        r if r >= 10.0 => format!("{r:.0}x"),
        r if r >= 2.0 => format!("{r:.1}x"),
        _ => format!("{r:.2}x"),
    }
}

/// The figure of one subject beside the baseline's, when both exist.
fn against_container(step: &Step, subject: Subject, x: Option<u32>) -> Option<(Summary, Summary)> {
    Some((stats::find(step, subject, x)?, stats::find(step, Subject::Container, x)?))
}

#[cfg(test)]
fn fixture() -> Results {
    serde_json::from_str(include_str!("../testdata/results.json")).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_round_trips_through_json() {
        let results = fixture();
        let again: Results = serde_json::from_str(&serde_json::to_string(&results).unwrap()).unwrap();
        assert_eq!(again, results);
        assert_eq!(results.schema, crate::bench::model::SCHEMA);
    }

    #[test]
    fn figures_are_rounded_to_what_matters() {
        assert_eq!((number(1234.4), number(45.67), number(0.4)), ("1234".into(), "45.7".into(), "0.40".into()));
        assert_eq!((times(10.7), times(3.12), times(0.981)), ("11x".into(), "3.1x".into(), "0.98x".into()));
    }
}
