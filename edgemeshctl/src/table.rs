//! Aligned plain-text tables, and how the API's values read in them.

use serde_json::Value;

/// Prints `rows` under `headers`, each column as wide as its widest cell.
pub fn print(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let text: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        println!("{}", text.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// A field as a cell: strings as they are, `null` as `-`, lists joined with `; `.
pub fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.replace(['\n', '\r', '\t'], " "),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join("; "),
        other => other.to_string(),
    }
}

/// The cells of `fields` of each object of `items`.
pub fn rows(items: &Value, fields: &[&str]) -> Vec<Vec<String>> {
    items
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|item| fields.iter().map(|f| cell(&item[*f])).collect())
                .collect()
        })
        .unwrap_or_default()
}

/// Key/value lines for one object.
pub fn record(value: &Value, fields: &[&str]) {
    let rows: Vec<Vec<String>> = fields
        .iter()
        .map(|f| vec![(*f).to_owned(), cell(&value[*f])])
        .collect();
    let width = fields.iter().map(|f| f.len()).max().unwrap_or(0);
    for row in rows {
        println!("{:<width$}  {}", row[0], row[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_read_as_text_without_line_breaks() {
        assert_eq!(cell(&Value::Null), "-");
        assert_eq!(cell(&serde_json::json!(["a", "b"])), "a; b");
        assert_eq!(cell(&serde_json::json!("two\nlines")), "two lines");
        assert_eq!(cell(&serde_json::json!(42)), "42");
    }
}
