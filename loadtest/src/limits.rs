//! Raising this process's open-files limit to its hard limit (each parked
//! poll is a socket; the hard limit here is 20,000 and cannot be raised).

/// Sets the soft RLIMIT_NOFILE to the hard one and returns the new limit.
pub fn raise_nofile() -> std::io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we own.
    #[allow(unsafe_code)]
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Sockets one process may hold, leaving room for its own files.
pub fn sockets_per_process(limit: u64) -> usize {
    (limit.saturating_sub(200) as usize).max(100)
}

#[cfg(test)]
mod tests {
    #[test]
    fn raises_to_the_hard_limit() {
        let got = super::raise_nofile().unwrap();
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        #[allow(unsafe_code)]
        // SAFETY: as above.
        unsafe {
            assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        }
        assert_eq!(lim.rlim_cur, lim.rlim_max);
        assert_eq!(got, lim.rlim_cur);
    }
}
