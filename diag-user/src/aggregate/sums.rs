//! Adding up per-process numbers: a group's, a series', the host's.

use std::ops::AddAssign;

use super::tcp::{Counters, Rates, StateCounts};

impl AddAssign<&Counters> for Counters {
    fn add_assign(&mut self, d: &Counters) {
        self.active_opens += d.active_opens;
        self.passive_opens += d.passive_opens;
        self.closes += d.closes;
        self.failed_connects += d.failed_connects;
        self.resets_sent += d.resets_sent;
        self.resets_received += d.resets_received;
        self.retransmits += d.retransmits;
        self.time_waits += d.time_waits;
        self.aborts += d.aborts;
        self.listen_overflows += d.listen_overflows;
        self.bytes_acked = self.bytes_acked.saturating_add(d.bytes_acked);
        self.bytes_received = self.bytes_received.saturating_add(d.bytes_received);
    }
}

impl AddAssign<&StateCounts> for StateCounts {
    fn add_assign(&mut self, d: &StateCounts) {
        self.established += d.established;
        self.syn_sent += d.syn_sent;
        self.syn_recv += d.syn_recv;
        self.fin_wait1 += d.fin_wait1;
        self.fin_wait2 += d.fin_wait2;
        self.close_wait += d.close_wait;
        self.last_ack += d.last_ack;
        self.closing += d.closing;
        self.time_wait += d.time_wait;
        self.listen += d.listen;
    }
}

impl AddAssign<&Rates> for Rates {
    fn add_assign(&mut self, d: &Rates) {
        self.active_opens += d.active_opens;
        self.passive_opens += d.passive_opens;
        self.closes += d.closes;
        self.failed_connects += d.failed_connects;
        self.resets_sent += d.resets_sent;
        self.resets_received += d.resets_received;
        self.retransmits += d.retransmits;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_add_every_field() {
        let one = Counters {
            active_opens: 1,
            passive_opens: 2,
            closes: 3,
            failed_connects: 4,
            resets_sent: 5,
            resets_received: 6,
            retransmits: 7,
            time_waits: 8,
            aborts: 9,
            listen_overflows: 10,
            bytes_acked: 11,
            bytes_received: 12,
        };
        let mut c = one;
        c += &one;
        assert_eq!(c.aborts, 18);
        assert_eq!(c.listen_overflows, 20);
        assert_eq!((c.bytes_acked, c.bytes_received), (22, 24));
        assert_eq!(c.active_opens, 2);
        let mut s = StateCounts {
            listen: 1,
            close_wait: 2,
            ..Default::default()
        };
        s += &s.clone();
        assert_eq!((s.listen, s.close_wait), (2, 4));
        let mut r = Rates {
            retransmits: 0.5,
            ..Default::default()
        };
        r += &r.clone();
        assert_eq!(r.retransmits, 1.0);
    }
}
