//! Locating the line of a bad record, for error messages.

use std::sync::Arc;

use arrow::datatypes::SchemaRef;

/// Where a record-by-record walk over a file stopped.
pub(super) enum Walk {
    /// The requested row starts at this byte offset.
    Row(usize),
    /// The record starting at this byte offset failed to decode.
    Error(usize, String),
    /// The end of the file, without error or requested row.
    End,
}

/// The 1-based line of the record starting at byte `offset` (skipping the
/// line breaks that precede it).
pub(super) fn line_at(bytes: &[u8], offset: usize) -> usize {
    let mut start = offset.min(bytes.len());
    while start < bytes.len() && bytes[start].is_ascii_whitespace() {
        start += 1;
    }
    if start == bytes.len() {
        start = offset.min(bytes.len());
    }
    1 + bytes[..start].iter().filter(|&&b| b == b'\n').count()
}

/// Decodes a CSV file one record at a time (error path only) to find the
/// byte offset of data row `stop_at` or of the first record that fails.
pub(super) fn csv_walk(
    bytes: &[u8],
    builder: arrow::csv::ReaderBuilder,
    has_header: bool,
    stop_at: Option<usize>,
) -> Walk {
    let mut decoder = builder.with_batch_size(1).build_decoder();
    // The first decode call of a file with a header only skips the header.
    let mut header_pending = has_header;
    let mut pos = 0;
    let mut record_start = 0;
    let mut row = 0;
    loop {
        if !header_pending && stop_at == Some(row) {
            return Walk::Row(record_start);
        }
        let consumed = match decoder.decode(&bytes[pos..]) {
            Ok(n) => n,
            Err(e) => return Walk::Error(record_start, e.to_string()),
        };
        pos += consumed;
        if header_pending {
            header_pending = false;
            record_start = pos;
            if consumed == 0 {
                return Walk::End;
            }
            continue;
        }
        if decoder.capacity() == 0 {
            // One whole record is buffered: parsing it may fail.
            if let Err(e) = decoder.flush() {
                return Walk::Error(record_start, e.to_string());
            }
            row += 1;
            record_start = pos;
            continue;
        }
        if consumed == 0 {
            return match decoder.flush() {
                Err(e) => Walk::Error(record_start, e.to_string()),
                Ok(_) => Walk::End,
            };
        }
        // Otherwise the input ended inside a record that has no final line
        // break: the next (empty) decode call completes it.
    }
}

/// Walks a JSON-lines file value by value (error path only): the byte
/// offset of row `stop_at`, or of the first value that is not valid JSON or
/// does not decode to the schema.
pub(super) fn json_walk(bytes: &[u8], schema: &SchemaRef, stop_at: Option<usize>) -> Walk {
    let mut decoder = match arrow::json::ReaderBuilder::new(Arc::clone(schema))
        .with_batch_size(1)
        .build_decoder()
    {
        Ok(decoder) => decoder,
        Err(_) => return Walk::End,
    };
    let mut stream =
        serde_json::Deserializer::from_slice(bytes).into_iter::<serde::de::IgnoredAny>();
    let mut start = 0;
    let mut row = 0;
    loop {
        // Skip the whitespace between values.
        while start < bytes.len() && bytes[start].is_ascii_whitespace() {
            start += 1;
        }
        if stop_at == Some(row) {
            return Walk::Row(start);
        }
        match stream.next() {
            None => return Walk::End,
            Some(Err(e)) => {
                // Report the line the bad value starts on (a JSON-lines
                // record); serde's column only where it is on that line.
                let message = if e.line() == line_at(bytes, start) {
                    format!(
                        "invalid JSON at column {}: {}",
                        e.column(),
                        strip_serde_position(&e)
                    )
                } else {
                    format!("invalid JSON: {}", strip_serde_position(&e))
                };
                return Walk::Error(start, message);
            }
            Some(Ok(_)) => {
                let end = stream.byte_offset();
                let result = decoder
                    .decode(&bytes[start..end])
                    .and_then(|_| decoder.flush());
                if let Err(e) = result {
                    return Walk::Error(start, e.to_string());
                }
                start = end;
                row += 1;
            }
        }
    }
}

/// serde_json's message without its " at line L column C" suffix.
pub(super) fn strip_serde_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message,
    }
}

/// Arrow's CSV message without its own (record-counting) line number.
pub(super) fn strip_arrow_line(message: &str) -> String {
    let mut out = message.to_string();
    for marker in [" for line ", " at line "] {
        if let Some(i) = out.find(marker) {
            let rest = &out[i + marker.len()..];
            let digits = rest.chars().take_while(char::is_ascii_digit).count();
            out = format!("{}{}", &out[..i], &rest[digits..]);
        }
    }
    out
}

/// Arrow's CSV parse message names a column by index; name it by name.
pub(super) fn name_csv_column(message: &str, decode_schema: &SchemaRef) -> String {
    let marker = " for column ";
    let Some(i) = message.find(marker) else {
        return message.to_string();
    };
    let rest = &message[i + marker.len()..];
    let digits = rest.chars().take_while(char::is_ascii_digit).count();
    match rest[..digits].parse::<usize>() {
        Ok(index) if index < decode_schema.fields().len() => format!(
            "{}{marker}'{}'{}",
            &message[..i],
            decode_schema.field(index).name(),
            &rest[digits..]
        ),
        _ => message.to_string(),
    }
}
