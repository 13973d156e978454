//! Columns cut to the terminal's width as iptstate cuts them: only Source
//! and Destination give way, each loses the end a reader needs least, and
//! with `--mark-truncated` a `+` shows where.

/// Spaces between two columns.
pub const SPACING: usize = 2;

/// Shrinks the Source and Destination widths (`widths[0]` and
/// `widths[1]`) so that all columns fit `area` with [`SPACING`] between
/// them, sharing the room as iptstate does: half each (the odd column to
/// the source), and a column needing less than its half leaves the rest
/// to the other.
pub fn fit_endpoints(widths: &mut [usize], area: usize) {
    let [src, dst, rest @ ..] = widths else {
        return;
    };
    let others = rest.iter().sum::<usize>() + SPACING * (rest.len() + 1);
    let room = area.saturating_sub(others);
    if *src + *dst <= room {
        return;
    }
    let dst_half = room / 2;
    let src_half = room - dst_half;
    (*src, *dst) = if *src <= src_half {
        (*src, room - *src)
    } else if *dst <= dst_half {
        (room - *dst, *dst)
    } else {
        (src_half, dst_half)
    };
}

/// Which end of a cut host stays.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Keep {
    /// The start (the end is cut).
    Start,
    /// The end (the start is cut).
    End,
}

/// What iptstate keeps of a host in column 0 (Source) or 1 (Destination):
/// a source name its start (you know your own domain), a destination name
/// its end (knowing users go to "mail.a." helps little); addresses the
/// other way round.
pub fn keep(column: usize, is_name: bool) -> Keep {
    match (column == 0, is_name) {
        (true, true) | (false, false) => Keep::Start,
        (true, false) | (false, true) => Keep::End,
    }
}

/// Cuts an endpoint cell of column 0 or 1 to `width` characters. The cell
/// is `host` or, with `has_port`, `host:port`; the host gives way (see
/// [`keep`]) and the port stays. With `mark`, a `+` replaces the character
/// next to the cut.
pub fn cut_endpoint(cell: &str, has_port: bool, column: usize, width: usize, mark: bool) -> String {
    let chars: Vec<char> = cell.chars().collect();
    if chars.len() <= width {
        return cell.to_string();
    }
    let port_len = if has_port {
        chars
            .iter()
            .rev()
            .position(|c| *c == ':')
            .map_or(0, |i| i + 1)
    } else {
        0
    };
    let (host, port) = chars.split_at(chars.len() - port_len);
    let host_text: String = host.iter().collect();
    let is_name = host_text
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<std::net::IpAddr>()
        .is_err();
    // No room for the port: the cell is cut as a whole, from the end.
    let (kept, port, side) = if width <= port_len {
        (&chars[..width], &[][..], Keep::Start)
    } else {
        let room = width - port_len;
        match keep(column, is_name) {
            Keep::Start => (&host[..room], port, Keep::Start),
            Keep::End => (&host[host.len() - room..], port, Keep::End),
        }
    };
    let mut out: Vec<char> = kept.to_vec();
    if mark && !out.is_empty() {
        let at = match side {
            Keep::Start => out.len() - 1,
            Keep::End => 0,
        };
        out[at] = '+';
    }
    out.extend_from_slice(port);
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_is_shared_as_iptstate_shares_it() {
        // Fits: nothing changes.
        let mut w = [10, 10, 3, 11, 7];
        fit_endpoints(&mut w, 80);
        assert_eq!(w, [10, 10, 3, 11, 7]);
        // 3 + 11 + 7 and four gaps of 2 leave 21 of 50: 11 and 10.
        let mut w = [40, 40, 3, 11, 7];
        fit_endpoints(&mut w, 50);
        assert_eq!(w, [11, 10, 3, 11, 7]);
        // A short source keeps its width; the destination takes the rest.
        let mut w = [8, 40, 3, 11, 7];
        fit_endpoints(&mut w, 50);
        assert_eq!(w, [8, 13, 3, 11, 7]);
        let mut w = [40, 6, 3, 11, 7];
        fit_endpoints(&mut w, 50);
        assert_eq!(w, [15, 6, 3, 11, 7]);
        // No room at all.
        let mut w = [40, 6, 3, 11, 7];
        fit_endpoints(&mut w, 10);
        assert_eq!(w, [0, 0, 3, 11, 7]);
    }

    #[test]
    fn names_and_addresses_are_cut_at_iptstate_s_ends() {
        let name = "verylonghostname.example.com:443";
        // Source name: keeps its start; destination name: its end.
        assert_eq!(cut_endpoint(name, true, 0, 14, false), "verylongho:443");
        assert_eq!(cut_endpoint(name, true, 1, 14, false), "xample.com:443");
        assert_eq!(cut_endpoint(name, true, 0, 14, true), "verylongh+:443");
        assert_eq!(cut_endpoint(name, true, 1, 14, true), "+ample.com:443");
        // Addresses the other way round; the port stays.
        let v6 = "[2001:db8:aaaa:bbbb::1]:40000";
        assert_eq!(cut_endpoint(v6, true, 0, 16, false), "a:bbbb::1]:40000");
        assert_eq!(cut_endpoint(v6, true, 1, 16, true), "[2001:db8+:40000");
        // Without a port (ICMP), the whole cell is the host.
        assert_eq!(
            cut_endpoint("2001:db8::1234", false, 1, 8, true),
            "2001:db+"
        );
        assert_eq!(
            cut_endpoint("gateway.example", false, 1, 8, true),
            "+example"
        );
        // Too narrow even for the port: cut from the end.
        assert_eq!(cut_endpoint(name, true, 0, 3, true), "ve+");
        // Fits: unchanged, marked or not.
        assert_eq!(cut_endpoint("a.b:22", true, 0, 6, true), "a.b:22");
        // UTF-8 names are cut on characters.
        assert_eq!(cut_endpoint("ñandú.test:80", true, 0, 6, true), "ña+:80");
    }
}
