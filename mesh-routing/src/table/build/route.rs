//! Compiling one `HTTPRoute` of a VirtualService into a [`CompiledRoute`].

use super::*;

impl Builder<'_> {
    pub(super) fn compile_route(
        &self,
        r: &HttpRoute,
        field: &str,
    ) -> Result<Option<CompiledRoute>, BuildError> {
        let mut blocks = Vec::new();
        for (i, m) in r.matches.iter().enumerate() {
            // sourceMatchHTTP: match-level gateways replace the VirtualService's.
            if !m.gateways.is_empty() && !m.gateways.iter().any(|g| self.ctx.serves(g)) {
                continue;
            }
            blocks.push(MatchBlock::compile(
                m,
                r.name.as_deref(),
                self.limits,
                &format!("{field}.match[{i}]"),
            )?);
        }
        if !r.matches.is_empty() && blocks.is_empty() {
            return Ok(None); // no block applies to this gateway context
        }
        let pre = &*self.snap.precompiled;
        let headers = HeaderRules::compile(r.headers.as_ref(), &format!("{field}.headers"), pre)?;
        let action = if let Some(redirect) = &r.redirect {
            match Redirect::compile(redirect) {
                Some(rd) => Action::Redirect(rd),
                None => {
                    // ApplyRedirect: an unsupported code leaves the route without an action.
                    self.warnings.borrow_mut().push(BuildError::new(
                        format!("{field}.redirect.redirectCode"),
                        format!(
                            "{} is not supported: the route is dropped (as Istio drops it)",
                            redirect.redirect_code.unwrap_or(0)
                        ),
                    ));
                    return Ok(None);
                }
            }
        } else if let Some(d) = &r.direct_response {
            Action::Direct(Direct::compile(d, &format!("{field}.directResponse"))?)
        } else {
            let mut dests = Vec::new();
            for (i, rd) in r.route.iter().enumerate() {
                let Some(d) = &rd.destination else { continue };
                let dest = self.destination(d);
                let cookie = self.sticky_cookie(&dest);
                dests.push(WeightedDest {
                    dest,
                    weight: u32::try_from(rd.weight).unwrap_or(0),
                    headers: HeaderRules::compile(
                        rd.headers.as_ref(),
                        &format!("{field}.route[{i}].headers"),
                        pre,
                    )?,
                    cookie,
                });
            }
            if dests.is_empty() {
                return Ok(None);
            }
            if dests.len() > 1 {
                // applyHTTPRouteDestination: 0-weight clusters are dropped when there are others.
                let total: u64 = dests.iter().map(|d| u64::from(d.weight)).sum();
                if total > 0 {
                    dests.retain(|d| d.weight > 0);
                }
            }
            let total_weight = dests
                .iter()
                .map(|d| d.weight)
                .fold(0u32, u32::saturating_add);
            let rewrite = match &r.rewrite {
                Some(rw) => UriRewrite::compile(rw, self.limits, &format!("{field}.rewrite"))?,
                None => None,
            };
            let rewrite_authority = r
                .rewrite
                .as_ref()
                .and_then(|rw| rw.authority.as_deref())
                .filter(|a| !a.is_empty())
                .map(|a| {
                    HeaderValue::from_str(a).map_err(|e| {
                        BuildError::new(format!("{field}.rewrite.authority"), e.to_string())
                    })
                })
                .transpose()?;
            let sticky = dests.iter().any(|d| d.cookie.is_some());
            Action::Forward(Forward {
                dests: dests.into(),
                total_weight,
                rewrite,
                authority: rewrite_authority.or_else(|| headers.authority.clone()),
                sticky,
            })
        };
        let cors = match &r.cors_policy {
            Some(c) => Some(Cors::compile(
                c,
                self.limits,
                &format!("{field}.corsPolicy"),
            )?),
            None => None,
        };
        let mut mirrors = Vec::new();
        if matches!(action, Action::Forward(_)) {
            if let Some(m) = &r.mirror {
                // MirrorPercent: mirrorPercentage, else mirrorPercent, else 100; 0 disables.
                let fraction = match (r.mirror_percentage, r.mirror_percent) {
                    (Some(p), _) => p.fraction(),
                    (None, Some(p)) => (f64::from(p) / 100.0).clamp(0.0, 1.0),
                    (None, None) => 1.0,
                };
                if fraction > 0.0 {
                    mirrors.push(MirrorSpec {
                        dest: self.destination(m),
                        fraction,
                    });
                }
            }
            for m in &r.mirrors {
                let Some(d) = &m.destination else { continue };
                let fraction = m.percentage.map_or(1.0, |p| p.fraction());
                if fraction > 0.0 {
                    mirrors.push(MirrorSpec {
                        dest: self.destination(d),
                        fraction,
                    });
                }
            }
        }
        let policy = RoutePolicy {
            route_name: r.name.as_deref().map(Into::into),
            timeout: r.timeout.map(|t| t.0).filter(|t| !t.is_zero()),
            retries: r
                .retries
                .as_ref()
                .map(|rt| Arc::new(RetryPolicy::from_istio(rt))),
            fault: r
                .fault
                .as_ref()
                .map(|f| Arc::new(FaultPolicy::from_istio(f))),
            rate_limit: self.rate_limits.for_route(r.name.as_deref()),
        };
        let policy = Arc::new(policy);
        let block_policies = blocks
            .iter()
            .map(|b| match &b.route_name {
                Some(name) => Arc::new(RoutePolicy {
                    route_name: Some(name.clone()),
                    ..(*policy).clone()
                }),
                None => policy.clone(),
            })
            .collect();
        Ok(Some(CompiledRoute {
            blocks: blocks.into(),
            action,
            headers,
            cors,
            policy,
            block_policies,
            mirrors: mirrors.into(),
        }))
    }
}
