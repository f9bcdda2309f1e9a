//! Paging of list calls.

use tonic::Status;

use crate::errors::invalid;

/// Default and largest page sizes of list calls.
pub const DEFAULT_PAGE_SIZE: usize = 1000;
pub const MAX_PAGE_SIZE: usize = 10_000;

/// One page of `items`: the page token is the offset of the page's first item.
pub fn page<T>(items: Vec<T>, page_size: u32, page_token: &str) -> Result<(Vec<T>, String), Status> {
    let size = match usize::try_from(page_size).unwrap_or(usize::MAX) {
        0 => DEFAULT_PAGE_SIZE,
        n if n > MAX_PAGE_SIZE => return Err(invalid("page_size", format!("{n} is larger than {MAX_PAGE_SIZE}"))),
        n => n,
    };
    let start = if page_token.is_empty() {
        0
    } else {
        page_token
            .parse::<usize>()
            .ok()
            .filter(|&s| s <= items.len())
            .ok_or_else(|| invalid("page_token", format!("{page_token:?} is not a token this list returned")))?
    };
    let end = start.saturating_add(size).min(items.len());
    let next = if end < items.len() { end.to_string() } else { String::new() };
    Ok((items.into_iter().skip(start).take(end - start).collect(), next))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_walk_the_whole_list() {
        let (a, t) = page((0..5).collect(), 2, "").unwrap();
        assert_eq!((a, t.as_str()), (vec![0, 1], "2"));
        let (b, t) = page((0..5).collect(), 2, &t).unwrap();
        assert_eq!((b, t.as_str()), (vec![2, 3], "4"));
        let (c, t) = page((0..5).collect(), 2, &t).unwrap();
        assert_eq!((c, t.as_str()), (vec![4], ""));
    }

    #[test]
    fn bad_page_token_and_size_are_invalid_arguments() {
        assert_eq!(page::<u8>(vec![], 0, "x").unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(page::<u8>(vec![], 0, "9").unwrap_err().code(), tonic::Code::InvalidArgument);
        assert_eq!(page::<u8>(vec![], 20_000, "").unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
