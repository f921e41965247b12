// Package bmpcheck is the referee of bmpproxy's BMP state cache: a parser of
// a BMP byte stream into the state a collector would hold, written from the
// RFCs and independently of package bmp and its cache, and a generator of
// realistic BMP streams that knows the state it built. Tests of any package
// import it; it uses the standard library only.
//
// # What a state holds
//
// A [State] is what a collector knows after reading a stream from its first
// byte (RFC 7854, 9069, 8671):
//
//   - the Initiation's information TLVs, in order (and the Termination's, if
//     the stream ended with one);
//   - the peers that are up, keyed by [PeerKey]: the per-peer header without
//     its timestamp (peer type, flags, distinguisher, address, AS, BGP ID), so
//     the pre- and post-policy (L), Adj-RIB-In and Adj-RIB-Out (O) and Loc-RIB
//     (type 3) views of one session are different peers. Each holds its latest
//     Peer Up ([PeerUp]: local address and ports, both OPENs as sent, the
//     information TLVs) and its tables;
//   - per peer and AFI/SAFI ([Family]) a [Table] of current routes,
//     [RouteKey] → [Route];
//   - the AFI/SAFIs that were announced or withdrawn but cannot be keyed
//     ([State.Unkeyed]): EVPN, flowspec, BGP-LS, anything else.
//
// # Canonical form
//
// A route's key is its prefix (masked: bits past the prefix length are not
// part of it), its Route Distinguisher for VPNv4/VPNv6 (RFC 4364, 4659), and
// its ADD-PATH path identifier when the table uses ADD-PATH (RFC 7911), else
// path id 0.
//
// A route's value is its label stack for labeled unicast and VPN (RFC 8277)
// and its [Attrs]: the UPDATE's path attributes in type-code order, each as
// flags (without the Extended Length bit, an encoding detail), type, a 2-byte
// length and the value, with:
//
//   - MP_UNREACH_NLRI removed;
//   - for a route carried in MP_REACH_NLRI, that attribute reduced to its next
//     hop (the value is the next hop's bytes, as sent: 16 or 32 for IPv6, an
//     8-byte zero RD before the address for VPN), and NEXT_HOP removed, which
//     RFC 4760 says such a route ignores;
//   - for a route in the IPv4 NLRI field, MP_REACH_NLRI removed;
//   - of an attribute that appears twice, the first kept (RFC 7606 3g).
//
// The value is compared bytewise otherwise: AS_PATH stays as sent (2- or
// 4-byte, as the A flag says), attribute contents are not interpreted. In
// single-label mode a label's S bit is set (RFC 8277 2.2 says it is ignored);
// with the Multiple Labels Capability exchanged the stack is kept as sent. A
// withdrawal's label field is one 3-byte compatibility field, whatever its
// value (RFC 8277 2.4).
//
// ADD-PATH use per AFI/SAFI comes from the Peer Up's OPENs: for an Adj-RIB-In
// the peer's OPEN (received) must offer Send and the router's (sent) Receive;
// for an Adj-RIB-Out (O flag) the reverse; for a Loc-RIB peer the capability's
// presence in the fabricated sent OPEN is enough (RFC 9069 5.3). An ADD-PATH
// capability with a Send/Receive value other than 1, 2 or 3 is ignored (RFC
// 7911 4); of two tuples for an AFI/SAFI the later counts. The Multiple
// Labels Capability counts when both OPENs carry it for the AFI/SAFI (for a
// Loc-RIB, the sent one); extended messages (RFC 8654) when both carry it.
//
// # Reading a stream
//
// Withdrawals (the IPv4 Withdrawn Routes field and MP_UNREACH_NLRI) remove
// routes before the UPDATE's announcements (MP_REACH_NLRI and the NLRI field)
// add or replace them. A Peer Down removes the peer with its routes; a Peer Up
// for a peer that is up starts it again with no routes. End-of-RIB (RFC 4724:
// an empty UPDATE, or one whose only attribute is an empty MP_UNREACH_NLRI) is
// recorded on its table and changes no route; [State.Equal] ignores it, since
// a replay sends one for every table. Statistics Reports and Route Mirroring
// are checked for framing and change nothing; message types past 6 are
// skipped. The Termination ends the stream.
//
// [Parse] is strict: it also rejects what a single well-formed session never
// contains, so that a replay which duplicates or loses a message is caught at
// the seam, not only in the final state: a first message other than the
// Initiation, a second Initiation, a Peer Up for a peer that is up, a Peer
// Down for one that is not, the withdrawal of a route that is not in its
// table, and an UPDATE longer than 4096 bytes on a session without extended
// messages. [ParseAll] accepts those as BGP does (the withdrawal of an absent
// route is a no-op, a repeated Initiation replaces the first), for streams
// whose sender the test does not control: a real router's, a fuzzer's.
// Both reject malformed input (bad length, version, marker, truncated field)
// with a [*ParseError] that gives the byte offset, and a Route Monitoring for
// a peer that is not up, whose NLRI cannot be decoded without its OPENs. A
// collector's recording of a replay followed by live messages is a stream
// like any other; when the router's stream was generated, Parse is the
// stricter check of it.
//
// # Comparing states
//
// [State.Equal] compares the Initiation, the Termination, the peers and
// their Peer Ups, the routes and ADD-PATH use of every table that has
// routes, and the unkeyed tables. [State.Diff] describes the first
// differences for a person, a bounded number of them, and counts the rest;
// [State.Summary], [State.PeerCount] and [State.RouteCount] say what a
// state holds.
//
// # Generating a stream
//
// [Generate] builds a deterministic BMP stream from a [GenConfig]; [Expect]
// is the state the generator tracked while emitting it (not derived by
// parsing it). [Encode] concatenates messages, so a test can cut a stream at
// any message boundary.
package bmpcheck
