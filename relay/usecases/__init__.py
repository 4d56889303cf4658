"""The relay's use cases, one module per kind of caller; `relay.service.RelayService` joins them.

- base.py         what every use case stands on: state, background work, lookup, end, expiry
- shared.py       errors, rate limits and input checks the use cases share
- technicians.py  a technician's login, API tokens, SSH authentication and tunnels
- sessions.py     a technician's sessions: create, list, end, codes, invitation, audit
- admins.py       a company administrator's technicians
- customers.py    the join page and activation, as the customer's agent calls them
- agents.py       an activated agent: credentials, reports, presence, end by the customer
"""
