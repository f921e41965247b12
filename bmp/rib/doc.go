// Package rib keeps the BMP state of router sessions, so that a collector
// that connects late, or reconnects after a restart, can be replayed what a
// collector that never left would hold (the resync of issue 17).
//
// # What is kept
//
// Per Router (one router session, fed its bytes in order):
//   - the Initiation (the latest, as received);
//   - the latest Peer Up of every peer that is up, keyed by its per-peer
//     header without the timestamp (peer type, flags, distinguisher,
//     address, AS, BGP ID). A Peer Up for a peer already up means its session
//     restarted: the old Peer Up and its routes go. Peer Down removes the
//     peer and its routes;
//   - per RIB of a peer and AFI/SAFI, the current routes. A RIB is the
//     per-peer header of the Route Monitoring messages: pre- or post-policy
//     (L), Adj-RIB-In or -Out (O, RFC 8671), Loc-RIB (peer type 3, RFC 9069).
//     It belongs to the peer whose Peer Up header is the same, or else to the
//     first peer up whose header is the same without the L, A and O flags
//     (routers send one Peer Up per peer and Route Monitoring with those
//     flags). Routes for no peer that is up make the state Unkeyable;
//   - a route is its key, prefix (bits past its length cleared) and
//     ADD-PATH path identifier (RFC 7911), plus for VPN families the route
//     distinguisher; its value is the interned attribute set and, for
//     labeled (RFC 8277) and VPN (RFC 4364, 4659) families, its label
//     stack. The attribute set is the path attributes as received, without
//     MP_REACH_NLRI and MP_UNREACH_NLRI, plus the MP_REACH_NLRI next hop
//     (or the fact that the route came in the NLRI field). AS_PATH and every
//     other attribute are opaque bytes, so 2- and 4-byte AS paths need no
//     conversion.
//
// ADD-PATH use per family is learned from the two OPENs of the Peer Up: for
// Adj-RIB-In the peer's (received) OPEN says Send and the router's (sent)
// says Receive, for Adj-RIB-Out the reverse, for Loc-RIB the capability's
// presence in the fabricated sent OPEN is enough (RFC 9069 §5.3). An
// ADD-PATH capability with a Send/Receive value other than 1, 2 or 3 is
// ignored (RFC 7911 §4); of two tuples for a family the later counts. A
// labeled NLRI carries one label unless both OPENs carry the Multiple Labels
// capability (RFC 8277 §2.1) for its family. Extended messages (RFC 8654)
// are read up to 65535 bytes always and replayed that large when both OPENs
// advertise them (for Loc-RIB, the sent one).
//
// Withdrawals apply before announcements within an UPDATE. End-of-RIB
// (RFC 4724) creates the table it names and no route. Statistics Reports
// and Route Mirroring are not kept. After a Termination nothing is kept.
//
// Keyed families: IPv4 and IPv6 unicast and multicast, labeled unicast,
// VPNv4 and VPNv6. Routes of any other family (EVPN, flowspec, BGP-LS...), a
// message type or peer type this package does not know make the state
// Unkeyable: the caller must not replay it. A malformed message (bad
// length, bad marker, truncated attribute or NLRI) makes it Failed, with an
// error naming the router and the byte offset. Either way the cache is
// dropped, once, and never resumed.
//
// # Memory
//
// Routes live in open-addressed hash tables with linear probing, one per
// table and key layout, with fixed-size keys of 4-byte words and a uint32
// attribute index per slot (label word alongside for labeled families): a
// slot is 12 bytes for IPv4 and 24 for IPv6, 4 more with a path identifier,
// 4 more with a label; 28 for VPNv4 and 40 for VPNv6. Tables are at most 4/5 full
// and grow by half, so an IPv4 route costs about 15 to 23 bytes. Attribute
// sets and label stacks of more than one label are interned with reference
// counts and freed when unused.
//
// The Memory accounting counts what Go allocates for these: every table's
// arrays (len × slot size, both arrays while one grows), every interned
// string rounded up to 8 bytes plus 64 bytes of slice header, reference
// count and map slot, each Peer Up and Initiation as received plus fixed
// overheads for peers, RIBs and tables, and the buffer of an incomplete
// message. It is charged before the allocation, so a Router stops
// (OverMemory) instead of growing past the limit. Not counted: scratch
// buffers bounded by one message, and a snapshot's replay buffers (64 KiB
// plus 4 bytes per route of the table being replayed).
//
// On the full-table workload of BenchmarkFullTable (8 peers, each 1,000,000
// IPv4 and 200,000 IPv6 prefixes, 20,000 attribute sets) the live heap is
// about 22 bytes per route, and the accounting agrees within 1%. For
// comparison, measured by others on whole routing daemons: bgperf with 5
// neighbours of 1,000,000 prefixes each saw BIRD 2.0.8 at 4.4 GB, FRR 7.7 at
// 3.6 GB and GoBGP 2.28 at 8.4 GB of peak memory, that is about 880, 720 and
// 1,700 bytes per route
// (https://gist.github.com/jopietsch/e6781c0c61bfa37d91b5a3d08c6939b0);
// GoBGP's maintainers measured 1.7 GB RSS for one full table in 2018, after
// a change that saved 500 MB (https://github.com/osrg/gobgp/pull/1665), and
// about 1 GiB for 820,000 routes in 2020
// (https://github.com/osrg/gobgp/issues/2247): 1.3 to 2.3 KB per route.
// OpenBGPD reports 124 MB for
// 745,305 prefixes, about 170 bytes per route
// (https://pastebin.com/wPgnz0nD). Those daemons keep far more per route
// (best path state, parsed attributes, per-route structures), so the
// figures bound the cost of doing it the usual way, not a like-for-like
// race.
//
// # Snapshots
//
// A Snapshot freezes the tables: each keeps its arrays read-only for the
// snapshot, and Feed writes a delta table over them (tombstones for
// withdrawals) which it merges back on its first call after the snapshot is
// closed. Attribute sets that become unused meanwhile stay until then. So a
// snapshot read on another goroutine sees exactly the state at the message
// boundary where it was taken, while Feed goes on at full speed, and the
// extra memory is the churn since the snapshot, not a copy.
//
// The replay is valid BMP: the Initiation, the Peer Ups as received in the
// order the peers came up, then per peer, RIB and family the routes as Route
// Monitoring messages (per-peer header with timestamp zero, "unavailable"),
// one UPDATE per attribute set packed as full as the session's message size
// allows, and an End-of-RIB after each table. A Router fed a replay holds
// the same state as the Router it came from.
package rib
