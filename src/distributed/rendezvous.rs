//! How the ranks of a world meet: rank 0 listens at MASTER_ADDR:MASTER_PORT, every other rank
//! connects (retrying until the deadline: rank 0 may start last) and says who it is; when all
//! have arrived with the same world size and the same command, rank 0 answers each "go".
//! Waits are bounded: a rank that never arrives, a rank 0 that never answers, two processes
//! with one rank or a different command are each an error naming the rank. The connections
//! stay open afterwards: they are what `host_collective` sums over, and a rank that stops
//! closes its own, which the others see at once.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::World;
use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"emrclas1";

/// One connection to another rank, with the rank it leads to: reads and writes whose failures
/// name that rank and say what probably happened.
pub struct Link {
    pub peer: usize,
    stream: TcpStream,
}

impl Link {
    fn new(peer: usize, stream: TcpStream) -> Result<Link> {
        stream
            .set_nodelay(true)
            .map_err(|e| Error::Invalid(format!("connection to rank {peer}: {e}")))?;
        Ok(Link { peer, stream })
    }

    /// Waits at most `timeout` for each read and each write from here on.
    pub fn set_timeout(&self, timeout: Duration) -> Result<()> {
        self.stream
            .set_read_timeout(Some(timeout))
            .and_then(|_| self.stream.set_write_timeout(Some(timeout)))
            .map_err(|e| Error::Invalid(format!("connection to rank {}: {e}", self.peer)))
    }

    pub fn send(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream
            .write_all(bytes)
            .map_err(|e| self.lost(e, "sending to"))
    }

    /// Exactly `buf.len()` bytes from the peer.
    pub fn recv(&mut self, buf: &mut [u8]) -> Result<()> {
        self.stream
            .read_exact(buf)
            .map_err(|e| self.lost(e, "waiting for"))
    }

    pub fn recv_u64(&mut self) -> Result<u64> {
        let mut b = [0u8; 8];
        self.recv(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn lost(&self, e: std::io::Error, doing: &str) -> Error {
        let peer = self.peer;
        Error::Invalid(match e.kind() {
            ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset | ErrorKind::BrokenPipe => format!(
                "rank {peer} closed its connection while this rank was {doing} it: rank {peer} stopped (its own output says why); every rank stops with it, and the run continues from its last checkpoint with --resume"
            ),
            ErrorKind::WouldBlock | ErrorKind::TimedOut => format!(
                "rank {peer} sent nothing for {:.1} s while this rank was {doing} it: rank {peer} hangs or its machine is gone (the wait is EMRCLASS_COLLECTIVE_TIMEOUT seconds); every rank stops, and the run continues from its last checkpoint with --resume",
                self.stream.read_timeout().ok().flatten().unwrap_or_default().as_secs_f64()
            ),
            _ => format!("connection to rank {peer} failed while {doing} it: {e}"),
        })
    }
}

/// What the rendezvous leaves: rank 0 a link to every other rank (in rank order), the others
/// one link, to rank 0; and what rank 0 handed every rank (NCCL's unique id, or nothing).
pub struct Links {
    pub links: Vec<Link>,
    pub payload: Vec<u8>,
}

fn hello(world: &World, tag: u64) -> Vec<u8> {
    let mut m = MAGIC.to_vec();
    m.extend_from_slice(&(world.rank as u64).to_le_bytes());
    m.extend_from_slice(&(world.size as u64).to_le_bytes());
    m.extend_from_slice(&tag.to_le_bytes());
    m
}

/// The ranks of `world` connected: rank 0 waits for all, the others for rank 0, at most
/// `timeout` in all. `tag`: the same on every rank (the command's hash); `payload`: what rank 0
/// hands every rank with its "go" (the others pass nothing).
pub fn meet(world: &World, tag: u64, timeout: Duration, payload: &[u8]) -> Result<Links> {
    let where_ = format!("{}:{}", world.master_addr, world.master_port);
    let addrs: Vec<_> = (world.master_addr.as_str(), world.master_port)
        .to_socket_addrs()
        .map_err(|e| Error::Invalid(format!("MASTER_ADDR {}: {e}", world.master_addr)))?
        .collect();
    let Some(&addr) = addrs.first() else {
        return Err(Error::Invalid(format!(
            "MASTER_ADDR {} names no address",
            world.master_addr
        )));
    };
    let deadline = Instant::now() + timeout;
    if world.rank == 0 {
        // Every interface, as torchrun: MASTER_ADDR is how the others reach rank 0, which
        // may resolve to another address on rank 0's own machine (127.0.1.1, a NAT).
        let any: std::net::IpAddr = match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::UNSPECIFIED.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::UNSPECIFIED.into(),
        };
        let listener = TcpListener::bind((any, world.master_port)).map_err(|e| {
            Error::Invalid(match e.kind() {
                ErrorKind::AddrInUse => format!(
                    "rank 0 cannot listen at {where_}: the port is in use (another run?); choose another MASTER_PORT (emrclass launch --master-port)"
                ),
                _ => format!(
                    "rank 0 cannot listen at {where_}: {e} (MASTER_ADDR must be an address of rank 0's machine)"
                ),
            })
        })?;
        accept_all(listener, world, tag, (deadline, timeout), &where_, payload)
    } else {
        connect_to_root(addr, world, tag, deadline, timeout, &where_)
    }
}

fn accept_all(
    listener: TcpListener,
    world: &World,
    tag: u64,
    (deadline, timeout): (Instant, Duration),
    where_: &str,
    payload: &[u8],
) -> Result<Links> {
    listener
        .set_nonblocking(true)
        .map_err(|e| Error::Invalid(format!("listening at {where_}: {e}")))?;
    let mut arrived: Vec<Option<Link>> = (0..world.size).map(|_| None).collect();
    let mut missing = world.size - 1;
    while missing > 0 {
        let (stream, from) = match listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    let absent: Vec<String> = (1..world.size)
                        .filter(|&r| arrived[r].is_none())
                        .map(|r| r.to_string())
                        .collect();
                    let why = format!(
                        "rendezvous at {where_}: rank(s) {} of {} never arrived within {:.0} s (are they started, with the same MASTER_ADDR and MASTER_PORT? EMRCLASS_RENDEZVOUS_TIMEOUT sets the wait)",
                        absent.join(", "),
                        world.size,
                        timeout.as_secs_f64()
                    );
                    refuse_all(&mut arrived, &why);
                    return Err(Error::Invalid(why));
                }
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            // A client that gave up before we took it: not a rank's problem.
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionAborted
                        | ErrorKind::Interrupted
                        | ErrorKind::ConnectionReset
                ) =>
            {
                continue
            }
            Err(e) => return Err(Error::Invalid(format!("listening at {where_}: {e}"))),
        };
        // A connection that is not a rank of this run (a port scan, a stray client) is dropped.
        let Some((rank, size, their_tag, stream)) = read_hello(stream, deadline) else {
            continue;
        };
        let mut link = Link::new(rank, stream)?;
        let problem = if size != world.size {
            Some(format!(
                "rank {rank} (from {from}) has WORLD_SIZE={size}, rank 0 has {}",
                world.size
            ))
        } else if rank == 0 || rank >= world.size {
            Some(format!(
                "a process from {from} says it is rank {rank} of {size}"
            ))
        } else if arrived[rank].is_some() {
            Some(format!(
                "two processes say they are rank {rank} (the second from {from})"
            ))
        } else if their_tag != tag {
            Some(format!(
                "rank {rank} (from {from}) runs another command than rank 0: every rank must run the same one"
            ))
        } else {
            None
        };
        if let Some(p) = problem {
            let why = format!("rendezvous at {where_}: {p}");
            let _ = refuse(&mut link, &why);
            refuse_all(&mut arrived, &why);
            return Err(Error::Invalid(why));
        }
        arrived[rank] = Some(link);
        missing -= 1;
    }
    let mut links: Vec<Link> = arrived.into_iter().flatten().collect();
    for link in &mut links {
        link.send(b"go")?;
        link.send(&(payload.len() as u64).to_le_bytes())?;
        link.send(payload)?;
    }
    Ok(Links {
        links,
        payload: payload.to_vec(),
    })
}

/// The hello of a connecting rank: (rank, world size, tag), or None when it is not one.
fn read_hello(stream: TcpStream, deadline: Instant) -> Option<(usize, usize, u64, TcpStream)> {
    let mut stream = stream;
    stream.set_nonblocking(false).ok()?;
    // A rank sends its hello at once; a connection that stays silent (a port scan, a health
    // check) is dropped after a few seconds, not left to hold up the rest.
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .clamp(Duration::from_millis(100), Duration::from_secs(5));
    stream.set_read_timeout(Some(wait)).ok()?;
    let mut m = [0u8; 32];
    stream.read_exact(&mut m).ok()?;
    if &m[..8] != MAGIC {
        return None;
    }
    let word = |i: usize| u64::from_le_bytes(m[i..i + 8].try_into().unwrap());
    Some((word(8) as usize, word(16) as usize, word(24), stream))
}

fn refuse(link: &mut Link, why: &str) -> Result<()> {
    link.send(b"no")?;
    link.send(&(why.len() as u64).to_le_bytes())?;
    link.send(why.as_bytes())
}

fn refuse_all(arrived: &mut [Option<Link>], why: &str) {
    for link in arrived.iter_mut().flatten() {
        let _ = refuse(link, why);
    }
}

fn connect_to_root(
    addr: std::net::SocketAddr,
    world: &World,
    tag: u64,
    deadline: Instant,
    timeout: Duration,
    where_: &str,
) -> Result<Links> {
    let rank = world.rank;
    let stream = loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                return Err(Error::Invalid(format!(
                    "rank {rank}: rank 0 never listened at {where_} within {:.0} s (last try: {e}); is it started, with the same MASTER_ADDR and MASTER_PORT? (EMRCLASS_RENDEZVOUS_TIMEOUT sets the wait)",
                    timeout.as_secs_f64()
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let mut link = Link::new(0, stream)?;
    link.send(&hello(world, tag))?;
    link.set_timeout(
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1)),
    )?;
    let mut answer = [0u8; 2];
    link.recv(&mut answer).map_err(|_| {
        Error::Invalid(format!(
            "rank {rank}: rank 0 at {where_} did not answer within {:.0} s (other ranks missing? its own output says)",
            timeout.as_secs_f64()
        ))
    })?;
    let len = link.recv_u64()? as usize;
    let mut text = vec![0u8; len.min(1 << 16)];
    link.recv(&mut text)?;
    match &answer {
        b"go" => Ok(Links {
            links: vec![link],
            payload: text,
        }),
        _ => Err(Error::Invalid(format!(
            "rank {rank}: rank 0 refused this rank: {}",
            String::from_utf8_lossy(&text)
        ))),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// Rank `rank` of `size` on this machine, rank 0 at `port`.
    pub(in crate::distributed) fn world(rank: usize, size: usize, port: u16) -> World {
        World {
            rank,
            size,
            local_rank: rank,
            master_addr: "127.0.0.1".into(),
            master_port: port,
        }
    }

    /// A port nobody listens on (as likely as loopback allows).
    pub(in crate::distributed) fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn ranks_meet_over_loopback_in_any_order() {
        let port = free_port();
        let t = Duration::from_secs(20);
        // The others first: they retry until rank 0 listens.
        let others: Vec<_> = (1..4)
            .map(|r| {
                std::thread::spawn(move || {
                    meet(&world(r, 4, port), 7, t, &[]).map(|l| (l.links.len(), l.payload))
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(200));
        let root = meet(&world(0, 4, port), 7, t, b"nccl id").unwrap();
        assert_eq!(
            root.links.iter().map(|l| l.peer).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        for o in others {
            assert_eq!(o.join().unwrap().unwrap(), (1, b"nccl id".to_vec()));
        }
    }

    #[test]
    fn a_rank_that_never_arrives_is_named() {
        let port = free_port();
        let t = Duration::from_millis(600);
        let one =
            std::thread::spawn(move || meet(&world(1, 3, port), 7, Duration::from_secs(20), &[]));
        let err = meet(&world(0, 3, port), 7, t, &[])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("rank(s) 2 of 3 never arrived"), "{err}");
        // The rank that came hears why.
        let theirs = one.join().unwrap().err().unwrap().to_string();
        assert!(
            theirs.contains("refused") && theirs.contains("rank(s) 2 of 3"),
            "{theirs}"
        );
    }

    #[test]
    fn a_rank_without_rank_0_gives_up_at_the_deadline() {
        let port = free_port();
        let err = meet(&world(1, 2, port), 7, Duration::from_millis(400), &[])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("rank 0 never listened at 127.0.0.1:"), "{err}");
    }

    #[test]
    fn another_command_or_world_size_is_refused() {
        let port = free_port();
        let t = Duration::from_secs(20);
        let one = std::thread::spawn(move || meet(&world(1, 2, port), 8, t, &[]));
        let err = meet(&world(0, 2, port), 7, t, &[])
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("rank 1") && err.contains("another command"),
            "{err}"
        );
        assert!(one.join().unwrap().is_err());

        let port = free_port();
        let one = std::thread::spawn(move || meet(&world(1, 3, port), 7, t, &[]));
        let err = meet(&world(0, 2, port), 7, t, &[])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("WORLD_SIZE=3, rank 0 has 2"), "{err}");
        assert!(one.join().unwrap().is_err());
    }
}
