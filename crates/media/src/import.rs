//! Parsing Clarifai-format CSV/TSV bulk-import files.
//!
//! A header row names the columns (any order; unknown columns are ignored):
//! `input.id`, `input.data.image.url`, `input.data.concepts[i].id`,
//! `input.data.concepts[i].value` and `input.data.metadata`. Problems with one row are reported
//! against its line number without stopping the others, so a user can fix everything in one pass.

use std::collections::BTreeMap;

use deeptune_core::status::StatusCode;
use serde::{Deserialize, Serialize};

const ID_COLUMN: &str = "input.id";
const URL_COLUMN: &str = "input.data.image.url";
const METADATA_COLUMN: &str = "input.data.metadata";
const CONCEPT_PREFIX: &str = "input.data.concepts[";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delimiter {
    Comma,
    Tab,
}

impl Delimiter {
    pub fn as_byte(self) -> u8 {
        match self {
            Delimiter::Comma => b',',
            Delimiter::Tab => b'\t',
        }
    }
}

/// Picks the delimiter from the file name's extension when it has a telling one, otherwise from
/// whichever of `,` and tab is more common in the header line.
pub fn detect_delimiter(file_name: Option<&str>, head: &[u8]) -> Delimiter {
    let extension = file_name.and_then(|n| n.rsplit_once('.')).map(|(_, ext)| ext.to_ascii_lowercase());
    match extension.as_deref() {
        Some("tsv" | "tab") => return Delimiter::Tab,
        Some("csv") => return Delimiter::Comma,
        _ => {}
    }
    let header = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let count = |needle: u8| header.iter().filter(|&&b| b == needle).count();
    if count(b'\t') > count(b',') { Delimiter::Tab } else { Delimiter::Comma }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportConcept {
    pub id: String,
    /// 1.0 when the concept is present, 0.0 when it is explicitly absent (a negative).
    pub value: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImportRow {
    /// 1-based line of the file where the row starts.
    pub line: u64,
    pub input_id: Option<String>,
    pub url: Option<String>,
    pub concepts: Vec<ImportConcept>,
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RowError {
    pub line: u64,
    pub message: String,
}

/// A problem with the file as a whole; no row can be imported.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("the file is empty; expected a header row naming the columns, e.g. input.id,input.data.image.url")]
    Empty,
    #[error("the header row (line {line}) is not valid UTF-8")]
    HeaderNotUtf8 { line: u64 },
    #[error("the header row has no {URL_COLUMN} column (found: {})", .found.join(", "))]
    MissingUrlColumn { found: Vec<String> },
    #[error("the header row names the column {column} more than once")]
    DuplicateColumn { column: String },
}

impl ImportError {
    pub fn status_code(&self) -> StatusCode {
        StatusCode::CONN_BAD_REQUEST_FORMAT
    }

    /// A stable machine-readable name for the failure; never changes once released.
    pub fn error_code(&self) -> &'static str {
        match self {
            ImportError::Empty => "import_empty",
            ImportError::HeaderNotUtf8 { .. } => "import_header_not_utf8",
            ImportError::MissingUrlColumn { .. } => "import_missing_url_column",
            ImportError::DuplicateColumn { .. } => "import_duplicate_column",
        }
    }
}

/// Parses an import file. The outer `Err` is for file-level problems; each row yields its own
/// `Ok` or `Err`, in file order. Blank lines are skipped.
pub fn parse_import(data: &[u8], delimiter: Delimiter) -> Result<Vec<Result<ImportRow, RowError>>, ImportError> {
    // Spreadsheet programs like to start UTF-8 exports with a byte-order mark.
    let data = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter.as_byte())
        .has_headers(false)
        // Wrong field counts become row errors with a useful message instead of csv's.
        .flexible(true)
        .trim(csv::Trim::All)
        .from_reader(data);

    let lines = LineIndex::new(data);
    let mut columns = None;
    let mut rows = Vec::new();
    for record in reader.byte_records() {
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                let line = e.position().map_or(0, |p| lines.line_at(p.byte()));
                match &columns {
                    None => return Err(ImportError::HeaderNotUtf8 { line }),
                    Some(_) => {
                        rows.push(Err(RowError { line, message: format!("could not be read: {e}") }));
                        continue;
                    }
                }
            }
        };
        if record.iter().all(<[u8]>::is_empty) {
            continue;
        }
        let line = record.position().map_or(0, |p| lines.line_at(p.byte()));
        match &columns {
            None => columns = Some(Columns::from_header(&record, line)?),
            Some(columns) => rows.push(columns.parse_row(&record, line)),
        }
    }
    if columns.is_none() {
        return Err(ImportError::Empty);
    }
    Ok(rows)
}

/// Maps byte offsets to 1-based line numbers. csv's own line numbers don't count the blank lines
/// it skips, which would send users to the wrong line.
struct LineIndex<'a> {
    data: &'a [u8],
    newlines: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    fn new(data: &'a [u8]) -> Self {
        let newlines = data.iter().enumerate().filter(|&(_, &b)| b == b'\n').map(|(i, _)| i).collect();
        LineIndex { data, newlines }
    }

    /// The line of the record whose position csv reports as `byte`. That position is just after
    /// the previous record, so skip the line breaks (blank lines) in between first.
    fn line_at(&self, byte: u64) -> u64 {
        let mut start = usize::try_from(byte).unwrap_or(usize::MAX).min(self.data.len());
        while self.data.get(start).is_some_and(|b| matches!(b, b'\r' | b'\n')) {
            start += 1;
        }
        self.newlines.partition_point(|&nl| nl < start) as u64 + 1
    }
}

#[derive(Debug, Default)]
struct ConceptColumns {
    id: Option<usize>,
    value: Option<usize>,
}

/// Where each known column sits in the header.
#[derive(Debug)]
struct Columns {
    count: usize,
    id: Option<usize>,
    url: usize,
    metadata: Option<usize>,
    /// Keyed by the `[i]` index, so concepts come out in index order.
    concepts: BTreeMap<u64, ConceptColumns>,
}

enum ColumnKind {
    Id,
    Url,
    Metadata,
    ConceptId(u64),
    ConceptValue(u64),
}

fn column_kind(name: &str) -> Option<ColumnKind> {
    let name = name.to_ascii_lowercase();
    match name.as_str() {
        ID_COLUMN => return Some(ColumnKind::Id),
        URL_COLUMN => return Some(ColumnKind::Url),
        METADATA_COLUMN => return Some(ColumnKind::Metadata),
        _ => {}
    }
    let (index, field) = name.strip_prefix(CONCEPT_PREFIX)?.split_once("].")?;
    let index = index.parse().ok()?;
    match field {
        "id" => Some(ColumnKind::ConceptId(index)),
        "value" => Some(ColumnKind::ConceptValue(index)),
        _ => None,
    }
}

impl Columns {
    fn from_header(record: &csv::ByteRecord, line: u64) -> Result<Columns, ImportError> {
        let names = record
            .iter()
            .map(|field| std::str::from_utf8(field).map(str::to_string))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ImportError::HeaderNotUtf8 { line })?;

        let (mut id, mut url, mut metadata) = (None, None, None);
        let mut concepts: BTreeMap<u64, ConceptColumns> = BTreeMap::new();
        for (position, name) in names.iter().enumerate() {
            let slot = match column_kind(name) {
                None => continue,
                Some(ColumnKind::Id) => &mut id,
                Some(ColumnKind::Url) => &mut url,
                Some(ColumnKind::Metadata) => &mut metadata,
                Some(ColumnKind::ConceptId(i)) => &mut concepts.entry(i).or_default().id,
                Some(ColumnKind::ConceptValue(i)) => &mut concepts.entry(i).or_default().value,
            };
            if slot.replace(position).is_some() {
                return Err(ImportError::DuplicateColumn { column: name.clone() });
            }
        }
        let url = url.ok_or_else(|| ImportError::MissingUrlColumn { found: names.clone() })?;
        Ok(Columns { count: names.len(), id, url, metadata, concepts })
    }

    fn parse_row(&self, record: &csv::ByteRecord, line: u64) -> Result<ImportRow, RowError> {
        let error = |message: String| RowError { line, message };
        if record.len() != self.count {
            return Err(error(format!(
                "has {} fields but the header has {} (check for an unquoted delimiter in a value)",
                record.len(),
                self.count
            )));
        }
        let field = |index: Option<usize>, name: &str| -> Result<Option<&str>, RowError> {
            let Some(index) = index else { return Ok(None) };
            let text = std::str::from_utf8(&record[index]).map_err(|_| error(format!("{name} is not valid UTF-8")))?;
            Ok((!text.is_empty()).then_some(text))
        };

        let input_id = field(self.id, ID_COLUMN)?.map(str::to_string);
        let url = field(Some(self.url), URL_COLUMN)?.ok_or_else(|| error(format!("{URL_COLUMN} is empty")))?;
        match url::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {}
            Ok(parsed) => {
                return Err(error(format!("{URL_COLUMN} must be an http or https URL, not {}", parsed.scheme())));
            }
            Err(e) => return Err(error(format!("{URL_COLUMN} {url:?} is not a valid URL: {e}"))),
        }

        let mut concepts: Vec<ImportConcept> = Vec::new();
        for (index, cols) in &self.concepts {
            let id_name = format!("{CONCEPT_PREFIX}{index}].id");
            let value_name = format!("{CONCEPT_PREFIX}{index}].value");
            let id = field(cols.id, &id_name)?;
            let value = field(cols.value, &value_name)?;
            let id = match (id, value) {
                (Some(id), _) => id,
                (None, None) => continue,
                (None, Some(value)) => return Err(error(format!("{value_name} is {value:?} but {id_name} is empty"))),
            };
            let value = match value {
                // Listing a concept without a value means the input shows it.
                None => 1.0,
                Some(value) => parse_concept_value(value)
                    .ok_or_else(|| error(format!("{value_name} must be 0 or 1 (or true/false), not {value:?}")))?,
            };
            if concepts.iter().any(|c| c.id == id) {
                return Err(error(format!("concept {id:?} is listed more than once")));
            }
            concepts.push(ImportConcept { id: id.to_string(), value });
        }

        let metadata = match field(self.metadata, METADATA_COLUMN)? {
            None => None,
            Some(text) => match serde_json::from_str::<serde_json::Value>(text) {
                Ok(value @ serde_json::Value::Object(_)) => Some(value),
                Ok(_) => {
                    return Err(error(format!("{METADATA_COLUMN} must be a JSON object like {{\"key\": \"value\"}}")));
                }
                Err(e) => return Err(error(format!("{METADATA_COLUMN} is not valid JSON: {e}"))),
            },
        };

        Ok(ImportRow { line, input_id, url: Some(url.to_string()), concepts, metadata })
    }
}

/// Concepts are either present (1) or explicitly absent (0); other scores make no sense as labels.
fn parse_concept_value(text: &str) -> Option<f32> {
    if text.eq_ignore_ascii_case("true") {
        return Some(1.0);
    }
    if text.eq_ignore_ascii_case("false") {
        return Some(0.0);
    }
    match text.parse::<f32>().ok()? {
        1.0 => Some(1.0),
        // Also matches -0.0, normalised to 0.0.
        0.0 => Some(0.0),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_csv(text: &str) -> Vec<Result<ImportRow, RowError>> {
        parse_import(text.as_bytes(), Delimiter::Comma).unwrap()
    }

    fn concept(id: &str, value: f32) -> ImportConcept {
        ImportConcept { id: id.into(), value }
    }

    fn row_error(result: &Result<ImportRow, RowError>) -> &RowError {
        result.as_ref().expect_err("expected a row error")
    }

    #[test]
    fn good_rows_with_columns_in_any_order() {
        let rows = parse_csv(
            "input.data.concepts[0].id,input.data.image.url,input.id,notes,input.data.metadata\n\
             cat,https://example.com/1.jpg,img1,ignored,\"{\"\"source\"\": \"\"web\"\"}\"\n\
             dog,http://example.com/2.png,,,\n",
        );
        assert_eq!(
            rows,
            vec![
                Ok(ImportRow {
                    line: 2,
                    input_id: Some("img1".into()),
                    url: Some("https://example.com/1.jpg".into()),
                    concepts: vec![concept("cat", 1.0)],
                    metadata: Some(json!({"source": "web"})),
                }),
                Ok(ImportRow {
                    line: 3,
                    input_id: None,
                    url: Some("http://example.com/2.png".into()),
                    concepts: vec![concept("dog", 1.0)],
                    metadata: None,
                }),
            ]
        );
    }

    #[test]
    fn multiple_concepts_with_values() {
        let rows = parse_csv(
            "input.data.image.url,input.data.concepts[1].id,input.data.concepts[1].value,\
             input.data.concepts[0].id,input.data.concepts[0].value,input.data.concepts[2].id\n\
             https://e.com/a.jpg,dog,0,cat,,bird\n\
             https://e.com/b.jpg,dog,false,cat,1.0,\n\
             https://e.com/c.jpg,,,cat,TRUE,\n",
        );
        let concepts: Vec<_> = rows.into_iter().map(|r| r.unwrap().concepts).collect();
        assert_eq!(
            concepts,
            vec![
                vec![concept("cat", 1.0), concept("dog", 0.0), concept("bird", 1.0)],
                vec![concept("cat", 1.0), concept("dog", 0.0)],
                vec![concept("cat", 1.0)],
            ]
        );
    }

    #[test]
    fn concept_value_other_than_zero_or_one_is_a_row_error_and_other_rows_survive() {
        let rows = parse_csv(
            "input.data.image.url,input.data.concepts[0].id,input.data.concepts[0].value\n\
             https://e.com/a.jpg,cat,2\n\
             https://e.com/b.jpg,cat,0.0\n\
             https://e.com/c.jpg,cat,-1\n",
        );
        assert_eq!(rows.len(), 3);
        let err = row_error(&rows[0]);
        assert_eq!(err.line, 2);
        assert!(err.message.contains("must be 0 or 1") && err.message.contains("\"2\""), "{}", err.message);
        assert_eq!(rows[1].as_ref().unwrap().concepts, vec![concept("cat", 0.0)]);
        assert_eq!(row_error(&rows[2]).line, 4);
    }

    #[test]
    fn value_without_concept_id_is_a_row_error() {
        let rows = parse_csv(
            "input.data.image.url,input.data.concepts[0].id,input.data.concepts[0].value,input.data.concepts[1].value\n\
             https://e.com/a.jpg,,1,\n\
             https://e.com/b.jpg,cat,,1\n",
        );
        assert!(row_error(&rows[0]).message.contains("input.data.concepts[0].id is empty"), "{:?}", rows[0]);
        assert!(row_error(&rows[1]).message.contains("input.data.concepts[1].id is empty"), "{:?}", rows[1]);
    }

    #[test]
    fn bad_metadata_is_a_row_error() {
        let rows = parse_csv(
            "input.data.image.url,input.data.metadata\n\
             https://e.com/a.jpg,{not json}\n\
             https://e.com/b.jpg,\"[1,2]\"\n",
        );
        assert!(row_error(&rows[0]).message.contains("not valid JSON"), "{:?}", rows[0]);
        assert!(row_error(&rows[1]).message.contains("must be a JSON object"), "{:?}", rows[1]);
    }

    #[test]
    fn missing_or_bad_url_is_a_row_error() {
        let rows = parse_csv(
            "input.id,input.data.image.url\n\
             a,\n\
             b,ftp://e.com/x.jpg\n\
             c,not a url\n\
             d,https://e.com/ok.jpg\n",
        );
        assert_eq!(row_error(&rows[0]), &RowError { line: 2, message: "input.data.image.url is empty".into() });
        assert!(row_error(&rows[1]).message.contains("http or https"), "{:?}", rows[1]);
        assert!(row_error(&rows[2]).message.contains("not a valid URL"), "{:?}", rows[2]);
        assert_eq!(rows[3].as_ref().unwrap().input_id.as_deref(), Some("d"));
    }

    #[test]
    fn wrong_field_count_is_a_row_error_naming_the_line() {
        let rows =
            parse_csv("input.id,input.data.image.url\r\na,https://e.com/a.jpg,extra\r\n\r\n\nb,https://e.com/b.jpg\n");
        assert_eq!(rows.len(), 2);
        let err = row_error(&rows[0]);
        assert_eq!(err.line, 2);
        assert!(err.message.contains("3 fields but the header has 2"), "{}", err.message);
        assert_eq!(err.to_string(), format!("line 2: {}", err.message));
        assert_eq!(rows[1].as_ref().unwrap().line, 5, "line numbers count the skipped blank lines");
    }

    #[test]
    fn tsv_files_parse_with_tabs() {
        let data = "input.id\tinput.data.image.url\tinput.data.concepts[0].id\n  x1 \thttps://e.com/a,b.jpg\tcat\n";
        assert_eq!(detect_delimiter(Some("batch.TSV"), data.as_bytes()), Delimiter::Tab);
        let rows = parse_import(data.as_bytes(), Delimiter::Tab).unwrap();
        let row = rows[0].as_ref().unwrap();
        assert_eq!(row.input_id.as_deref(), Some("x1"), "whitespace is trimmed");
        assert_eq!(row.url.as_deref(), Some("https://e.com/a,b.jpg"));
        assert_eq!(row.concepts, vec![concept("cat", 1.0)]);
    }

    #[test]
    fn quoted_fields_may_contain_commas_and_newlines() {
        let rows = parse_csv(
            "input.data.image.url,input.data.metadata,input.id\n\
             \"https://e.com/a,b.jpg\",\"{\"\"caption\"\": \"\"one, two\"\",\n\"\"n\"\": 3}\",q1\n\
             https://e.com/c.jpg,,q2\n",
        );
        let first = rows[0].as_ref().unwrap();
        assert_eq!(first.url.as_deref(), Some("https://e.com/a,b.jpg"));
        assert_eq!(first.metadata, Some(json!({"caption": "one, two", "n": 3})));
        assert_eq!(rows[1].as_ref().unwrap().line, 4, "the quoted newline occupies line 3");
    }

    #[test]
    fn header_only_file_has_no_rows() {
        assert_eq!(parse_csv("input.id,input.data.image.url\n"), vec![]);
        assert_eq!(parse_csv("\u{feff}input.id,input.data.image.url\n\n\n"), vec![]);
    }

    #[test]
    fn file_level_errors() {
        assert_eq!(parse_import(b"", Delimiter::Comma), Err(ImportError::Empty));
        assert_eq!(parse_import(b"\n  \n", Delimiter::Comma), Err(ImportError::Empty));

        let err = parse_import(b"input.id,url\na,https://e.com/a.jpg\n", Delimiter::Comma).unwrap_err();
        assert_eq!(err, ImportError::MissingUrlColumn { found: vec!["input.id".into(), "url".into()] });
        assert_eq!(err.to_string(), "the header row has no input.data.image.url column (found: input.id, url)");
        assert_eq!(err.status_code(), StatusCode::CONN_BAD_REQUEST_FORMAT);
        assert_eq!(err.error_code(), "import_missing_url_column");

        let err = parse_import(b"input.data.image.url,input.data.image.url\n", Delimiter::Comma).unwrap_err();
        assert!(matches!(err, ImportError::DuplicateColumn { .. }), "{err:?}");

        let err = parse_import(b"input.data.image.url,\xff\xfe\n", Delimiter::Comma).unwrap_err();
        assert_eq!(err, ImportError::HeaderNotUtf8 { line: 1 });
    }

    #[test]
    fn duplicate_concept_in_a_row_is_a_row_error() {
        let rows = parse_csv(
            "input.data.image.url,input.data.concepts[0].id,input.data.concepts[1].id\nhttps://e.com/a.jpg,cat,cat\n",
        );
        assert!(row_error(&rows[0]).message.contains("more than once"), "{:?}", rows[0]);
    }

    #[test]
    fn delimiter_detection() {
        assert_eq!(detect_delimiter(Some("x.tab"), b"a,b"), Delimiter::Tab);
        assert_eq!(detect_delimiter(Some("x.csv"), b"a\tb\tc"), Delimiter::Comma);
        assert_eq!(detect_delimiter(Some("upload"), b"input.id\tinput.data.image.url\nx,y,z,w"), Delimiter::Tab);
        assert_eq!(detect_delimiter(None, b"input.id,input.data.image.url\n"), Delimiter::Comma);
    }
}
