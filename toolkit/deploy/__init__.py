"""Deploy to boards over SSH: wheelhouses, releases, the systemd unit, fleets."""
