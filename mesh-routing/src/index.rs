//! The per-virtual-host candidate index: which of a host's routes can match a request path.
//!
//! Within a virtual host, routes are tried in order and the first that matches wins (Envoy's
//! route list). Most match blocks carry a literal the request's `:path` must start with:
//! `uri.exact` and `uri.prefix` are literals themselves, and a `uri.regex` starts with the
//! literal prefix [`literal_prefix`](mesh_core::pattern::literal_prefix) extracts (empty when it
//! cannot tell). A route is a *candidate* for a path when one of its blocks has no such
//! condition (no `uri`, a regex without a literal prefix: it may match any path) or its
//! literal is a prefix of the path. Every route that can match is a candidate, so trying only
//! the candidates, in route order, selects exactly the route the full scan selects.
//!
//! The literals are ASCII-lowercased into one radix trie, so `ignoreUriCase` literals need no
//! second structure; a case-sensitive route whose literal differs from the path only in case
//! is a candidate it did not need to be, and its own matcher rejects it. Each trie node holds
//! the ordered list of the routes whose literal is a prefix of (or equal to) the node's key.
//! The candidates of a path are the list of the deepest node the path fully walks to, merged
//! in order with the routes without a condition: one walk of at most the longest literal, no
//! allocation.

use crate::matcher::PathCond;

/// Virtual hosts with more routes than this get an index; smaller ones are scanned.
pub(crate) const INDEX_MIN_ROUTES: usize = 9;

/// The candidate index of one virtual host's routes.
#[derive(Debug)]
pub(crate) struct PathIndex {
    /// Routes (positions in the host's route list) any path may match, ascending.
    any: Box<[u32]>,
    /// Trie nodes; the root is node 0, and each node's children are contiguous, sorted by the
    /// first byte of their label.
    nodes: Box<[Node]>,
    /// Edge labels (ASCII-lowercased literal bytes), indexed by [`Node::label`].
    labels: Box<[u8]>,
    /// Candidate lists (ascending route positions), indexed by [`Node::list`].
    lists: Box<[u32]>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Node {
    /// The first byte of the label (for the child search).
    first: u8,
    /// The label from the parent: `labels[start..start + len]`.
    label: (u32, u32),
    /// The children: `nodes[start..start + len]`.
    children: (u32, u32),
    /// The conditional candidates: `lists[start..start + len]`.
    list: (u32, u32),
}

/// An uncompressed trie node while building.
#[derive(Default)]
struct BuildNode {
    children: std::collections::BTreeMap<u8, usize>,
    /// Routes whose literal ends here.
    own: Vec<u32>,
}

fn slice<T>(all: &[T], (start, len): (u32, u32)) -> &[T] {
    let start = start as usize;
    all.get(start..start + len as usize).unwrap_or(&[])
}

fn span(start: usize, len: usize) -> Option<(u32, u32)> {
    Some((u32::try_from(start).ok()?, u32::try_from(len).ok()?))
}

impl PathIndex {
    /// Builds the index of a route list, each route given by its match blocks' path
    /// conditions (none: the route has no match blocks and matches everything). `None` when
    /// the list is too short to benefit, or the candidate lists would grow out of proportion
    /// (deeply nested literals).
    pub(crate) fn build<I, B>(routes: I) -> Option<PathIndex>
    where
        I: IntoIterator<Item = B>,
        B: IntoIterator<Item = PathCond>,
    {
        let mut any = Vec::new();
        let mut trie = vec![BuildNode::default()];
        let mut count = 0usize;
        for (i, blocks) in routes.into_iter().enumerate() {
            count += 1;
            let i = u32::try_from(i).ok()?;
            let mut literals = Vec::new();
            let mut always = true; // no blocks: matches everything
            for cond in blocks {
                match cond {
                    PathCond::Never => always = false,
                    PathCond::Any => {
                        always = true;
                        literals.clear();
                        break;
                    }
                    PathCond::Prefix(lit) => {
                        always = false;
                        literals.push(lit);
                    }
                }
            }
            if always || literals.iter().any(|l| l.is_empty()) {
                any.push(i);
                continue;
            }
            // No literal (every block can never match): the route is nobody's candidate.
            for lit in literals {
                let mut node = 0;
                for b in lit.iter().map(u8::to_ascii_lowercase) {
                    let next = trie.len();
                    let child = *trie.get_mut(node)?.children.entry(b).or_insert(next);
                    if child == next {
                        trie.push(BuildNode::default());
                    }
                    node = child;
                }
                let own = &mut trie.get_mut(node)?.own;
                if own.last() != Some(&i) {
                    own.push(i);
                }
            }
        }
        if count < INDEX_MIN_ROUTES {
            return None;
        }
        // Radix-compress and flatten breadth-first, so that siblings are contiguous. Each
        // queue entry: (build node, label, inherited candidate list span).
        let budget = 64 * count + 4096;
        let mut nodes: Vec<Node> = vec![Node::default()];
        let mut labels: Vec<u8> = Vec::new();
        let mut lists: Vec<u32> = Vec::new();
        // (flat index, build node, list span)
        let mut queue = std::collections::VecDeque::new();
        let root_list = span(0, 0)?;
        queue.push_back((0usize, 0usize, root_list));
        while let Some((flat, bn, inherited)) = queue.pop_front() {
            let own = &trie.get(bn)?.own;
            let list = if own.is_empty() {
                inherited
            } else {
                let start = lists.len();
                let parent = slice(&lists, inherited).to_vec();
                lists.extend(merge(&parent, own));
                if lists.len() > budget {
                    return None;
                }
                span(start, lists.len() - start)?
            };
            let first_child = nodes.len();
            let mut kids = 0;
            for (&b, &child) in &trie.get(bn)?.children {
                // Follow single-child chains without routes: one edge with a longer label.
                let label_start = labels.len();
                labels.push(b);
                let mut end = child;
                loop {
                    let n = trie.get(end)?;
                    if !n.own.is_empty() || n.children.len() != 1 {
                        break;
                    }
                    let (&b, &next) = n.children.iter().next()?;
                    labels.push(b);
                    end = next;
                }
                nodes.push(Node {
                    first: b,
                    label: span(label_start, labels.len() - label_start)?,
                    children: (0, 0),
                    list,
                });
                queue.push_back((nodes.len() - 1, end, list));
                kids += 1;
            }
            let n = nodes.get_mut(flat)?;
            n.children = span(first_child, kids)?;
            n.list = list;
        }
        Some(PathIndex {
            any: any.into(),
            nodes: nodes.into(),
            labels: labels.into(),
            lists: lists.into(),
        })
    }

    /// The positions of the routes that can match a request with this `:path` (path and
    /// query), ascending.
    pub(crate) fn candidates(&self, path: &[u8]) -> Candidates<'_> {
        let mut node = self.nodes.first().copied().unwrap_or_default();
        let mut rest = path;
        while let Some(&b) = rest.first() {
            let kids = slice(&self.nodes, node.children);
            let b = b.to_ascii_lowercase();
            let Ok(k) = kids.binary_search_by_key(&b, |n| n.first) else {
                break;
            };
            let Some(&child) = kids.get(k) else { break };
            let label = slice(&self.labels, child.label);
            match rest.get(..label.len()) {
                Some(head) if head.eq_ignore_ascii_case(label) => {
                    rest = rest.get(label.len()..).unwrap_or(&[]);
                    node = child;
                }
                _ => break,
            }
        }
        Candidates {
            a: &self.any,
            b: slice(&self.lists, node.list),
        }
    }

    /// The number of trie nodes (for diagnostics and tests).
    #[cfg(test)]
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len()
    }
}

/// Two ascending lists merged, without duplicates.
fn merge(a: &[u32], b: &[u32]) -> Vec<u32> {
    let mut out: Vec<u32> = Candidates { a, b }.collect();
    out.dedup();
    out
}

/// The candidate route positions for one request, ascending: the unconditional routes merged
/// with the trie node's list (disjoint sets).
#[derive(Debug, Clone)]
pub(crate) struct Candidates<'a> {
    a: &'a [u32],
    b: &'a [u32],
}

impl Iterator for Candidates<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        match (self.a.split_first(), self.b.split_first()) {
            (Some((&x, ra)), Some((&y, rb))) => {
                if x <= y {
                    self.a = ra;
                    if x == y {
                        self.b = rb;
                    }
                    Some(x)
                } else {
                    self.b = rb;
                    Some(y)
                }
            }
            (Some((&x, ra)), None) => {
                self.a = ra;
                Some(x)
            }
            (None, Some((&y, rb))) => {
                self.b = rb;
                Some(y)
            }
            (None, None) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathCond {
        PathCond::Prefix(s.as_bytes().into())
    }

    fn index(routes: Vec<Vec<PathCond>>) -> PathIndex {
        PathIndex::build(routes).expect("indexed")
    }

    fn cands(ix: &PathIndex, path: &str) -> Vec<u32> {
        ix.candidates(path.as_bytes()).collect()
    }

    #[test]
    fn small_hosts_are_not_indexed() {
        let routes: Vec<Vec<PathCond>> = (0..INDEX_MIN_ROUTES - 1).map(|_| vec![p("/a")]).collect();
        assert!(PathIndex::build(routes).is_none());
    }

    #[test]
    fn candidates_are_the_prefix_chain_merged_with_unconditional_routes() {
        let ix = index(vec![
            vec![p("/api/v1/")],              // 0
            vec![p("/a")],                    // 1: ends mid-segment
            vec![PathCond::Any],              // 2: header-only
            vec![p("/api/v1/users")],         // 3
            vec![p("/api/v2")],               // 4
            vec![PathCond::Never],            // 5: never matches
            vec![p("/"), p("/x")],            // 6
            vec![p("/API/")],                 // 7: case folded
            vec![p("/b"), PathCond::Any],     // 8: any block unconditional
            vec![],                           // 9: catch-all
            vec![PathCond::Never, p("/q?x")], // 10
        ]);
        assert_eq!(cands(&ix, "/api/v1/users/7"), [0, 1, 2, 3, 6, 7, 8, 9]);
        assert_eq!(cands(&ix, "/api/v1"), [1, 2, 6, 7, 8, 9]);
        assert_eq!(cands(&ix, "/Api/V2x"), [1, 2, 4, 6, 7, 8, 9]);
        assert_eq!(cands(&ix, "/ap"), [1, 2, 6, 8, 9]);
        assert_eq!(cands(&ix, "/q?x=1"), [2, 6, 8, 9, 10]);
        assert_eq!(cands(&ix, "/q"), [2, 6, 8, 9]);
        assert_eq!(cands(&ix, "x"), [2, 8, 9]);
        assert_eq!(cands(&ix, ""), [2, 8, 9]);
        // Radix compression: "/api/v" is one edge below "/a".
        assert!(ix.node_count() < 20, "{}", ix.node_count());
    }

    #[test]
    fn deeply_nested_literals_fall_back_to_the_scan() {
        // 3000 nested prefixes: ~4.5M list entries, over the budget.
        let routes: Vec<Vec<PathCond>> = (1..3000)
            .map(|n| vec![PathCond::Prefix(vec![b'a'; n].into())])
            .collect();
        assert!(PathIndex::build(routes).is_none());
    }
}
