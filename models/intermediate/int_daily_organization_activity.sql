{#-
    One row per spine day: distinct organizations and organizations whose first activity in the
    day's period of each declared grain falls on that day (organizations have many events per
    day: (day, organization) pairs are de-duplicated before the sort). See day_activity.
-#}
{{ metricsmith.day_activity('organization_id', 'organizations', 'active_organizations',
                            ref('int_changed_days'), ref('stg_events'), dedupe_first=true) }}
