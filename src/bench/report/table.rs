//! The summary a run prints when it ends: plain text, aligned across all
//! groups so that columns can be compared at a glance, and readable in a
//! CI log where no HTML viewer exists.

use super::{rows_by_group, Results, FIGURES};

pub fn table(results: &Results) -> String {
    let heading: Vec<String> = ["step", "subject"].into_iter().chain(FIGURES).map(String::from).collect();
    let groups: Vec<_> = rows_by_group(results)
        .into_iter()
        .map(|(group, rows)| {
            let lines: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    let mut cells = vec![r.name(), r.series.subject.label().to_string()];
                    match r.figures() {
                        Ok(figures) => cells.extend(figures),
                        Err(why) => cells.push(why),
                    }
                    cells
                })
                .collect();
            (group, lines)
        })
        .collect();

    // A failure's text runs on past the figures' columns: it sets no width.
    let aligned = |cells: &Vec<String>| if cells.len() == heading.len() { cells.len() } else { 2 };
    let mut widths = vec![0; heading.len()];
    for cells in groups.iter().flat_map(|(_, lines)| lines).chain([&heading]) {
        for (w, c) in widths.iter_mut().zip(&cells[..aligned(cells)]) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &Vec<String>| {
        let mut line = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = if i < aligned(cells) { widths[i] } else { 0 };
            // Names read from the left, figures compare from the right.
            line += &if i < 2 { format!("  {c:<w$}") } else { format!("  {c:>w$}") };
        }
        line.trim_end().to_string() + "\n"
    };

    let mut out = line(&heading);
    for (group, lines) in &groups {
        out += group.title();
        out.push('\n');
        out.extend(lines.iter().map(line));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;

    fn line<'a>(table: &'a str, step: &str, subject: &str) -> &'a str {
        table
            .lines()
            .find(|l| l.split_whitespace().next() == Some(step) && l.contains(subject))
            .unwrap_or_else(|| panic!("no row for {step} {subject} in\n{table}"))
    }

    #[test]
    fn rows_show_figures_and_the_ratio_to_container() {
        let t = table(&fixture());
        let vm = line(&t, "lifecycle.total", "amphi vm");
        // The fixture's medians: 432 ms in a VM against 41.22 ms.
        assert!(vm.contains("432 ms") && vm.ends_with("10x"), "{vm}");
        assert!(line(&t, "lifecycle.total", "amphi container").ends_with("baseline"));
        let runc = line(&t, "syscall.getpid", "runc");
        assert!(runc.contains(" ns ") && runc.ends_with('x'), "{runc}");
        assert!(t.lines().any(|l| l == "Lifecycle") && t.lines().any(|l| l == "Density"), "{t}");
    }

    #[test]
    fn density_rows_are_matched_by_instance_count() {
        let t = table(&fixture());
        let vm = line(&t, "density.pss_per_instance", "amphi vm");
        assert!(vm.contains("(N=1)"), "{vm}");
        assert_eq!(t.lines().filter(|l| l.contains("density.start_all (N=10)")).count(), 4);
    }

    #[test]
    fn a_failed_series_shows_its_error_and_no_figure() {
        let t = table(&fixture());
        let crun = line(&t, "network.throughput", "crun");
        assert!(crun.ends_with("failed: crun exec: the client could not connect to the server"), "{crun}");
        assert!(!crun.chars().any(|c| c.is_ascii_digit()), "a number in {crun}");
    }
}
