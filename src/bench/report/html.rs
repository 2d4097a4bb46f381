//! The report as one HTML file that can be mailed, attached to an issue or
//! opened offline years later: inline CSS and inline SVG only, no script,
//! nothing fetched. Every text from the results is escaped, since a bundle
//! name or an error message can hold anything.

use super::super::model::{Group, Results};
use super::{charts, plain_summary, rows_by_group, ReportError, FIGURES};

const STYLE: &str = "body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}\
table{border-collapse:collapse;margin:.5rem 0 1.5rem}th,td{padding:.2rem .6rem;border-bottom:1px solid #ddd}\
td.n{text-align:right;font-variant-numeric:tabular-nums}td.failed{color:#b00020}th{text-align:left}\
p.note{color:#666;font-style:italic}svg{max-width:100%;height:auto}";

pub fn html(results: &Results) -> Result<String, ReportError> {
    let s = &results.settings;
    let title = format!("amphi bench: {} suite, amphi {}", s.suite, results.amphi_version);
    let mut page = format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{0}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n<h1>{0}</h1>\n<h2>In plain words</h2>\n",
        esc(&title)
    );
    page += &list(&plain_summary(results), "No comparison with container isolation could be made from this run.");

    let h = &results.host;
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    let subjects: Vec<&str> = s.subjects.iter().map(|s| s.label()).collect();
    let density: Vec<String> = s.density.iter().map(u32::to_string).collect();
    let facts = [
        ("CPU", format!("{} ({} CPUs)", h.cpu_model, h.cpus)),
        ("Kernel", h.kernel.clone()),
        ("Memory", format!("{} MiB", h.memory_mib)),
        ("Nested (host is a VM)", yes_no(h.nested).to_string()),
        ("KVM", yes_no(h.kvm).to_string()),
        ("Load average at start", format!("{:.2}", h.load_average)),
        ("Started", utc(results.started_unix)),
        ("Suite", s.bundle.as_ref().map_or(s.suite.clone(), |b| format!("{} ({b})", s.suite))),
        ("Subjects, interleaved", subjects.join(", ")),
        ("Runs (after warm-up)", format!("{} ({} warm-up)", s.runs, s.warmup)),
        ("Density instance counts", density.join(", ")),
    ];
    page += "<h2>Host and settings</h2>\n<table>\n";
    for (name, value) in facts {
        page += &format!("<tr><th>{}</th><td>{}</td></tr>\n", esc(name), esc(&value));
    }
    page += "</table>\n<h2>Warnings</h2>\n";
    page += &list(&results.warnings, "None.");

    page += "<h2>Lifecycle latency</h2>\n<p>Per subject: the box spans the quartiles, the thick line is the \
             median, the whiskers reach the fastest and slowest run.</p>\n";
    let lifecycle: Vec<_> = results.steps.iter().filter(|s| s.group == Group::Lifecycle).collect();
    for step in &lifecycle {
        page += &figure(&format!("{} ({})", step.title, step.id), charts::boxes(step)?);
    }
    if lifecycle.is_empty() {
        page += &note("No lifecycle step was measured.");
    }

    page += "<h2>Overhead against container isolation</h2>\n";
    page += &figure("Median of each workload, as a multiple of container isolation's", charts::overhead(results)?);

    page += "<h2>Density</h2>\n";
    let density: Vec<_> = results.steps.iter().filter(|s| s.group == Group::Density).collect();
    for step in &density {
        page +=
            &figure(&format!("{} ({}) against the number of instances", step.title, step.id), charts::density(step)?);
    }
    if density.is_empty() {
        page += &note("The density step was not measured.");
    }

    page += "<h2>Data</h2>\n";
    for (group, rows) in rows_by_group(results) {
        page += &format!("<h3>{}</h3>\n<table>\n<tr><th>step</th><th>title</th><th>subject</th>", esc(group.title()));
        page.extend(FIGURES.map(|f| format!("<th>{}</th>", esc(f))));
        page += "</tr>\n";
        for row in rows {
            let (step, subject) = (&row.step.title, row.series.subject.label());
            page += &format!("<tr><td>{}</td><td>{}</td><td>{}</td>", esc(&row.name()), esc(step), esc(subject));
            match row.figures() {
                Ok(figures) => page.extend(figures.map(|f| format!("<td class=\"n\">{}</td>", esc(&f)))),
                Err(why) => page += &format!("<td class=\"failed\" colspan=\"{}\">{}</td>", FIGURES.len(), esc(&why)),
            }
            page += "</tr>\n";
        }
        page += "</table>\n";
    }
    page += "</body>\n</html>\n";
    Ok(page)
}

fn figure(caption: &str, svg: Option<String>) -> String {
    match svg {
        Some(svg) => format!("<figure>\n<figcaption>{}</figcaption>\n{svg}</figure>\n", esc(caption)),
        None => note(&format!("{caption}: no data to chart (missing or failed).")),
    }
}

fn note(text: &str) -> String {
    format!("<p class=\"note\">{}</p>\n", esc(text))
}

fn list(items: &[String], empty: &str) -> String {
    if items.is_empty() {
        return note(empty);
    }
    let items: String = items.iter().map(|i| format!("<li>{}</li>\n", esc(i))).collect();
    format!("<ul>\n{items}</ul>\n")
}

fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out += "&amp;",
            '<' => out += "&lt;",
            '>' => out += "&gt;",
            '"' => out += "&quot;",
            '\'' => out += "&#39;",
            c => out.push(c),
        }
    }
    out
}

/// A Unix time as a UTC date and minute, without a date crate for one line.
fn utc(unix: u64) -> String {
    let (mut days, secs) = (unix / 86_400, unix % 86_400);
    let leap = |y: u64| (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let mut year = 1970;
    while days >= if leap(year) { 366 } else { 365 } {
        days -= if leap(year) { 366 } else { 365 };
        year += 1;
    }
    let months = [31, if leap(year) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut month = 0;
    while days >= months[month] {
        days -= months[month];
        month += 1;
    }
    format!("{year}-{:02}-{:02} {:02}:{:02} UTC", month + 1, days + 1, secs / 3600, secs % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;

    #[test]
    fn the_page_is_self_contained() {
        let page = html(&fixture()).unwrap();
        assert!(!page.to_lowercase().contains("<script"));
        let outside = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        for marker in ["http://", "https://", "url(", "@import", "<link", "<img"] {
            assert!(!outside.contains(marker), "{marker} in the page");
        }
    }

    #[test]
    fn one_svg_per_chart_and_a_note_for_a_missing_one() {
        let page = html(&fixture()).unwrap();
        // Six lifecycle steps, the overhead bars and two density steps.
        assert_eq!(page.matches("<svg").count(), 9);
        assert!(!page.contains("class=\"note\""), "a chart skipped");
        let mut r = fixture();
        r.steps.retain(|s| s.group != Group::Density);
        let page = html(&r).unwrap();
        assert_eq!(page.matches("<svg").count(), 7);
        assert!(page.contains("The density step was not measured."));
    }

    #[test]
    fn the_page_has_summary_facts_and_the_failure() {
        let page = html(&fixture()).unwrap();
        assert!(page.contains("<li>A VM container goes through a whole lifecycle"));
        assert!(page.contains("<th>Nested (host is a VM)</th><td>yes</td>"));
        assert!(page.contains("<li>crun failed network.throughput: see its row</li>"));
        assert!(page.contains(">failed: crun exec: the client could not connect to the server</td>"));
        assert!(page.contains("2026-01-01 00:00 UTC"));
    }

    #[test]
    fn text_from_the_results_is_escaped() {
        let mut r = fixture();
        r.steps[0].title = "a <&> b".into();
        r.warnings.push("<script>x</script>".into());
        let page = html(&r).unwrap();
        assert!(page.contains("a &lt;&amp;&gt; b") && page.contains("&lt;script&gt;x"));
        assert!(!page.contains("a <&> b") && !page.contains("<script>"));
    }
}
